"""Time windows shared by the drift and performance jobs.

Windows sit on a fixed grid (whole UTC days) so that re-running a job for the
same moment produces the same windows, and the unique keys on the check tables
make the re-run an update rather than a duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd


@dataclass(frozen=True, slots=True)
class Window:
    start: datetime
    end: datetime

    def mask(self, times: np.ndarray) -> np.ndarray:
        """Boolean mask of ``times`` (datetime64[us], naive UTC) inside [start, end)."""
        lo = np.datetime64(self.start.astimezone(UTC).replace(tzinfo=None), "us")
        hi = np.datetime64(self.end.astimezone(UTC).replace(tzinfo=None), "us")
        return (times >= lo) & (times < hi)

    def slice(self, times: np.ndarray) -> slice:
        """The positions of ``times`` (sorted, datetime64[us]) inside [start, end)."""
        lo = np.datetime64(self.start.astimezone(UTC).replace(tzinfo=None), "us")
        hi = np.datetime64(self.end.astimezone(UTC).replace(tzinfo=None), "us")
        first, last = np.searchsorted(times, [lo, hi], side="left")
        return slice(int(first), int(last))

    def describe(self) -> str:
        return f"{self.start:%Y-%m-%d}..{(self.end - timedelta(seconds=1)):%Y-%m-%d}"


def groups(values: np.ndarray) -> dict[str, np.ndarray]:
    """Row positions per distinct value of ``values``, each in row order.

    One hashing pass over the rows (``pandas.factorize``, in C) and one stable
    argsort, instead of a boolean mask per value: with 300 scanners a mask each
    is 300 passes, and a Python loop over a million labels costs ~0.5 s.
    """
    if len(values) == 0:
        return {}
    inverse, uniques = pd.factorize(values, use_na_sentinel=False)
    order = np.argsort(inverse, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse, minlength=len(uniques)))])
    # a missing value is keyed "None", as str(None) always keyed it
    names = ["None" if v is None or v != v else str(v) for v in uniques]
    return {name: order[bounds[c] : bounds[c + 1]] for c, name in enumerate(names)}


def floor_day(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def forward_windows(origin: datetime, until: datetime, days: int) -> list[Window]:
    """Complete windows of ``days`` from ``origin`` that end no later than ``until``."""
    step = timedelta(days=days)
    windows = []
    start = origin
    while start + step <= until:
        windows.append(Window(start, start + step))
        start += step
    return windows


def backward_windows(end: datetime, not_before: datetime, days: int) -> list[Window]:
    """Windows of ``days`` ending at ``end``, going back while they start >= ``not_before``."""
    step = timedelta(days=days)
    windows = []
    stop = end
    while stop - step >= not_before:
        windows.append(Window(stop - step, stop))
        stop -= step
    return list(reversed(windows))


__all__ = ["Window", "backward_windows", "floor_day", "forward_windows", "groups"]
