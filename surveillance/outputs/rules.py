"""The decision rules in words, for the people who read reports and exports.

One sentence per rule, shared by the PMS report and the Article 72 export so
that both say the same thing (and a test can find it in each).
"""

from __future__ import annotations

#: The drift rule (DESIGN.md "Detectors and decisions"), for the quality manager.
DRIFT_RULE = (
    "A check counts as drift only when it is statistically significant after correcting for "
    "the number of tests run in its window (adjusted p below alpha) and the distribution moved "
    "by at least the tolerance set in advance for that signal (effect size at or above the "
    "tolerance); a significant change smaller than the tolerance is listed as 'below "
    "tolerance' and never opens an incident."
)

__all__ = ["DRIFT_RULE"]
