"""When did a drift start, and which recorded change coincides with it.

The incident policy calls these three functions to say *since when* a signal
has drifted and *what changed then*:

* :func:`persistent_onset` - the start of the first window of the latest
  persistent run of ``drift`` windows of one signal at one stratum. A run is a
  sequence of consecutive judged windows (each starts where the previous one
  ended) that are all ``drift``; it is persistent when it holds at least
  ``min_windows`` windows (the ``[drift] persistence_windows`` setting). An
  isolated earlier flag never counts, and neither does a ``below_tolerance``
  window (significant but small): it breaks a run.
* :func:`coinciding_change` - the recorded change event (a new software
  version, a new kernel, see :mod:`surveillance.analysis.changes`) first seen
  within one window before the onset or in the onset window itself, the
  closest to the onset.
* :func:`describe_change` - one line for titles and timelines:
  ``software VF11A -> VF12B first seen 2026-09-30 at scanner X``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from surveillance.core.statuses import DriftStatus
from surveillance.store.domain import ChangeEvent, DriftCheck

#: What a header field is called in a sentence.
FIELD_WORDS: dict[str, str] = {
    "software_versions": "software",
    "convolution_kernel": "kernel",
    "view_position": "view position",
    "manufacturer": "manufacturer",
    "model_name": "scanner model",
}


def persistent_onset(checks: Sequence[DriftCheck], min_windows: int = 2) -> datetime | None:
    """Start of the latest persistent run of drift windows (module docstring), or None.

    ``checks`` are one signal's checks at one stratum, in any order; several
    checks of one window (two detectors on one signal) make the window ``drift``
    when any of them is. Windows whose checks are all ``insufficient_data`` are
    skipped (they neither extend nor break a run); any other status breaks it.
    """
    if min_windows < 1:
        raise ValueError(f"'min_windows' must be >= 1, got {min_windows!r}")
    status: dict[datetime, str] = {}
    for check in checks:
        before = status.get(check.window_start, DriftStatus.INSUFFICIENT_DATA)
        if DriftStatus.DRIFT in (before, check.status):
            status[check.window_start] = DriftStatus.DRIFT
        elif check.status != DriftStatus.INSUFFICIENT_DATA:
            status[check.window_start] = check.status
        else:
            status[check.window_start] = before
    onset: datetime | None = None
    run_start: datetime | None = None
    run_length = 0
    for start in sorted(status):
        if status[start] == DriftStatus.INSUFFICIENT_DATA:
            continue
        if status[start] != DriftStatus.DRIFT:
            run_start, run_length = None, 0
            continue
        if run_length == 0:
            run_start = start
        run_length += 1
        if run_length >= min_windows:
            onset = run_start
    return onset


def coinciding_change(
    changes: Sequence[ChangeEvent], onset: datetime | None, window_days: int
) -> ChangeEvent | None:
    """The change first seen in ``[onset - window_days, onset + window_days)``, closest first.

    A change part-way through the window before the onset usually shows in the
    onset window (the earlier window is mostly unchanged); one in the onset
    window shows at once. Ties go to the earlier change.
    """
    if onset is None or not changes:
        return None
    span = timedelta(days=window_days)
    near = [c for c in changes if onset - span <= c.first_seen_at < onset + span]
    if not near:
        return None
    return min(near, key=lambda c: (abs((c.first_seen_at - onset).total_seconds()), c.id))


def describe_change(change: ChangeEvent) -> str:
    """``software VF11A -> VF12B first seen 2026-09-30 at scanner X``."""
    what = FIELD_WORDS.get(change.field, change.field.replace("_", " "))
    values = (
        f"{change.old_value} -> {change.new_value}"
        if change.old_value is not None
        else f"{change.new_value} (new)"
    )
    where = (
        "across the deployment"
        if change.stratum_kind == "overall"
        else f"at {change.stratum_kind} {change.stratum_value}"
    )
    return f"{what} {values} first seen {change.first_seen_at:%Y-%m-%d} {where}"


__all__ = ["FIELD_WORDS", "coinciding_change", "describe_change", "persistent_onset"]
