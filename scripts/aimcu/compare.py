"""Our per-case CUSUM (detectors.cusum) side by side with the FDA's AIM-CU method.

    .venv/bin/python scripts/aimcu/compare.py [--runs 1000] [--arl0-days 365] [--json]

AIM-CU (https://github.com/DIDSR/AIM-CU, read through its source and docs, no
code copied) monitors one performance figure per time unit (e.g. the day's
sensitivity) with a two-sided tabular CUSUM on the normalised statistic:

* the in-control mean and standard deviation are estimated from the first
  ``init_days`` observations (``np.std``, ddof 0);
* ``K = k * sigma`` and ``H = h * sigma`` with the normalised reference value
  ``k`` (default 0.5, i.e. a 1-sigma shift) and threshold ``h``;
* ``S_hi = max(0, S_hi + x - mu - K)``, ``S_lo = max(0, S_lo + mu - x - K)``,
  alarm at the first time either exceeds ``H``; no restart;
* ``h`` for a wanted ARL0 comes from R's ``spc::xcusum.crit(k, ARL0,
  sided="one")`` (normal observations), and its ARL1 tables from
  ``spc::xcusum.ad(..., sided="two")``.

Here the normal-theory ARL is computed independently (Nystrom method with
Gauss-Legendre nodes on the integral equation of the one-sided chart, as in
Vance 1986; pinned against the published 336.4 for k = 0.5, h = 4), so no R
is needed. Note that AIM-CU takes ``h`` from the *one-sided* ARL0 while it
alarms on *either* side: its in-control ARL is about half the stated one.

Ours (detectors.cusum, what the performance job runs) watches the cases one by
one: errors 1/0 (a missed positive for sensitivity), the likelihood-ratio
reference value for an error rate moving from the clearance value's to the
alert limit's, and ``h`` from the exact Bernoulli ARL (Markov chain) for
``arl0_days x cases_per_day`` cases.

The seeded series: ``cases_per_day`` positives a day, sensitivity ``p_in``
for ``init_days`` (AIM-CU's baseline) then ``monitor_days`` monitored
in-control days, then sensitivity ``p_out`` for ``post_days``. Both charts
start after the baseline. A false alarm is an alarm in the monitored
in-control days (the lines with true mu, sigma
isolate the estimation effect; "2-sided h" takes h from twice the ARL0, so that
the two-sided chart really reaches it); the detection delay is counted on a chart started fresh at
the change (zero-state), in days: 0 = an alarm on the first changed day.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from detectors.cusum import (
    average_run_length,
    bernoulli_reference,
    cusum,
    decision_interval_for_time,
)

# ---- AIM-CU's method, implemented from its documentation ----------------------------


def normal_cusum_arl(k: float, h: float, mu: float = 0.0, nodes: int = 64) -> float:
    """Zero-state ARL of the one-sided CUSUM ``S = max(0, S + X - k)`` on X ~ N(mu, 1).

    Solves ``L(s) = 1 + L(0) Phi(k - mu - s) + int_0^h L(y) phi(y + k - mu - s) dy``
    by the Nystrom method; the atom at 0 is one more unknown.
    """
    if not (h > 0 and k >= 0):
        raise ValueError(f"need h > 0 and k >= 0, got h={h!r}, k={k!r}")
    z, w = np.polynomial.legendre.leggauss(nodes)
    y = (z + 1.0) * h / 2.0
    w = w * h / 2.0
    points = np.concatenate(([0.0], y))  # L(0), then L(y_i)
    # a[i, j]: weight of L(points[j]) in the equation for L(points[i])
    a = np.zeros((nodes + 1, nodes + 1))
    a[:, 0] = stats.norm.cdf(k - mu - points)
    a[:, 1:] = w[None, :] * stats.norm.pdf(y[None, :] + k - mu - points[:, None])
    arl = np.linalg.solve(np.eye(nodes + 1) - a, np.ones(nodes + 1))
    return float(arl[0])


def aimcu_threshold(k: float, arl0: float) -> float:
    """Normalised ``h`` whose one-sided in-control ARL is ``arl0`` (xcusum.crit, sided="one")."""
    lo, hi = 1e-3, 50.0
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2.0
        if normal_cusum_arl(k, mid) >= arl0:
            hi = mid
        else:
            lo = mid
    return hi


def two_sided_arl(k: float, h: float, mu: float = 0.0) -> float:
    """Two-sided ARL from the one-sided ones: ``1/L = 1/L+ + 1/L-`` (Lucas & Crosier)."""
    return 1.0 / (1.0 / normal_cusum_arl(k, h, mu) + 1.0 / normal_cusum_arl(k, h, -mu))


def aimcu_first_alarm(x: np.ndarray, mu0: float, sigma: float, k: float, h: float) -> int | None:
    """First index where AIM-CU's two-sided chart (K = k sigma, H = h sigma) exceeds H."""
    big_k, big_h = k * sigma, h * sigma
    s_hi = s_lo = 0.0
    for i, value in enumerate(x):
        s_hi = max(0.0, s_hi + value - mu0 - big_k)
        s_lo = max(0.0, s_lo + mu0 - value - big_k)
        if s_hi > big_h or s_lo > big_h:
            return i
    return None


# ---- the comparison ---------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    cases_per_day: int = 40
    p_in: float = 0.90  # sensitivity in control (the clearance value)
    p_out: float = 0.80  # after the change (the alert limit)
    init_days: int = 30
    monitor_days: int = 90
    post_days: int = 60
    arl0_days: float = 365.0
    k_normalised: float = 0.5  # AIM-CU's default reference value


@dataclass(frozen=True)
class MethodFigures:
    method: str
    h: float  # on the method's own scale (see ``scale``)
    scale: str
    stated_arl0_days: float
    in_control_arl_days: float  # what the design really gives (theory)
    false_alarm_runs: int  # runs with an alarm in the monitored in-control days
    false_alarm_fraction: float
    expected_false_alarm_fraction: float  # 1 - exp(-monitor_days / stated ARL0)
    detected_runs: int  # fresh chart at the change alarms within post_days
    detected_fraction: float
    median_delay_days: float | None
    mean_delay_days: float | None


@dataclass(frozen=True)
class Comparison:
    scenario: Scenario
    runs: int
    seed: int
    figures: list[MethodFigures]


def _delays(first: list[int | None], post_days: int) -> tuple[int, float | None, float | None]:
    found = [d for d in first if d is not None and d < post_days]
    if not found:
        return 0, None, None
    return len(found), float(np.median(found)), float(np.mean(found))


def compare(scenario: Scenario, runs: int, seed: int = 20260930) -> Comparison:
    sc = scenario
    n = sc.cases_per_day
    q0, q1 = 1.0 - sc.p_in, 1.0 - sc.p_out  # error (miss) rates
    # ours: per case, h for one false alarm per arl0_days at this volume
    k_ours = bernoulli_reference(q0, q1)
    h_ours = decision_interval_for_time(q0, q1, n, sc.arl0_days)
    # AIM-CU: per day, h from the one-sided ARL0 in days
    k = sc.k_normalised
    h_aim = aimcu_threshold(k, sc.arl0_days)
    # the h AIM-CU's two-sided chart would need to really reach ARL0 (1/L = 2/L+)
    h_two = aimcu_threshold(k, 2.0 * sc.arl0_days)
    sigma_true = math.sqrt(sc.p_in * (1 - sc.p_in) / n)

    ours_fa: list[int | None] = []
    ours_det: list[int | None] = []
    aim_fa: list[int | None] = []
    aim_det: list[int | None] = []
    known_fa: list[int | None] = []
    known_det: list[int | None] = []
    two_fa: list[int | None] = []
    two_det: list[int | None] = []
    for run in range(runs):
        rng = np.random.default_rng([seed, run])
        before = rng.random((sc.init_days + sc.monitor_days, n)) < q0
        after = rng.random((sc.post_days, n)) < q1
        baseline = 1.0 - before[: sc.init_days].mean(axis=1)
        monitored = before[sc.init_days :]
        daily_in = 1.0 - monitored.mean(axis=1)
        daily_out = 1.0 - after.mean(axis=1)
        # ours, on the cases in time order
        r_in = cusum(monitored.ravel().astype(float), target=q0, k=k_ours, h=h_ours)
        r_out = cusum(after.ravel().astype(float), target=q0, k=k_ours, h=h_ours)
        ours_fa.append(None if r_in.alarm_index is None else r_in.alarm_index // n)
        ours_det.append(None if r_out.alarm_index is None else r_out.alarm_index // n)
        # AIM-CU as documented: mu and sigma estimated from the baseline days
        mu_hat, sd_hat = float(baseline.mean()), float(baseline.std())
        if sd_hat <= 0.0:  # a baseline with no variation cannot be normalised
            sd_hat = sigma_true
        aim_fa.append(aimcu_first_alarm(daily_in, mu_hat, sd_hat, k, h_aim))
        aim_det.append(aimcu_first_alarm(daily_out, mu_hat, sd_hat, k, h_aim))
        # AIM-CU's statistic with the true in-control mean and sd (no estimation error)
        known_fa.append(aimcu_first_alarm(daily_in, sc.p_in, sigma_true, k, h_aim))
        known_det.append(aimcu_first_alarm(daily_out, sc.p_in, sigma_true, k, h_aim))
        two_fa.append(aimcu_first_alarm(daily_in, sc.p_in, sigma_true, k, h_two))
        two_det.append(aimcu_first_alarm(daily_out, sc.p_in, sigma_true, k, h_two))

    expected = 1.0 - math.exp(-sc.monitor_days / sc.arl0_days)
    ours_arl0_days = average_run_length(q0, q0, k_ours, h_ours) / n
    aim_arl0_days = two_sided_arl(k, h_aim)
    figures = []
    for name, h, scale, arl, fa, det in (
        ("ours (per case, Bernoulli LR)", h_ours, "errors", ours_arl0_days, ours_fa, ours_det),
        (
            "AIM-CU (mu, sigma from baseline)",
            h_aim,
            "sigma of daily value",
            aim_arl0_days,
            aim_fa,
            aim_det,
        ),
        (
            "AIM-CU (true mu, sigma)",
            h_aim,
            "sigma of daily value",
            aim_arl0_days,
            known_fa,
            known_det,
        ),
        (
            "AIM-CU (true mu, sigma; 2-sided h)",
            h_two,
            "sigma of daily value",
            two_sided_arl(k, h_two),
            two_fa,
            two_det,
        ),
    ):
        alarms = sum(a is not None for a in fa)
        detected, median, mean = _delays(det, sc.post_days)
        figures.append(
            MethodFigures(
                method=name,
                h=round(h, 4),
                scale=scale,
                stated_arl0_days=sc.arl0_days,
                in_control_arl_days=round(arl, 1),
                false_alarm_runs=alarms,
                false_alarm_fraction=alarms / runs,
                expected_false_alarm_fraction=round(expected, 4),
                detected_runs=detected,
                detected_fraction=detected / runs,
                median_delay_days=median,
                mean_delay_days=None if mean is None else round(mean, 2),
            )
        )
    return Comparison(sc, runs, seed, figures)


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for a proportion."""
    tail = (1.0 - level) / 2.0
    lower = 0.0 if successes == 0 else stats.beta.ppf(tail, successes, trials - successes + 1)
    upper = (
        1.0 if successes == trials else stats.beta.ppf(1 - tail, successes + 1, trials - successes)
    )
    return float(lower), float(upper)


def _table(result: Comparison) -> str:
    sc = result.scenario
    lines = [
        f"{result.runs} seeded runs (seed {result.seed}): {sc.cases_per_day} positives/day, "
        f"sensitivity {sc.p_in} -> {sc.p_out}; baseline {sc.init_days} d, "
        f"{sc.monitor_days} monitored in-control days, {sc.post_days} days after the change; "
        f"ARL0 {sc.arl0_days:g} days for both",
        "",
        f"{'method':34} {'h':>8} {'ARL0 real (d)':>13} {'false alarm (90 d)':>22} "
        f"{'detected':>9} {'delay median/mean (d)':>22}",
    ]
    for f in result.figures:
        lo, hi = clopper_pearson(f.false_alarm_runs, result.runs)
        fa = f"{f.false_alarm_fraction:6.1%} [{lo:.1%},{hi:.1%}]"
        delay = (
            f"{f.median_delay_days:g} / {f.mean_delay_days:g}"
            if f.median_delay_days is not None and f.mean_delay_days is not None
            else "-"
        )
        lines.append(
            f"{f.method:34} {f.h:8.3f} {f.in_control_arl_days:13.1f} {fa:>22} "
            f"{f.detected_fraction:9.1%} {delay:>22}"
        )
    lines.append(
        f"expected false-alarm fraction over {sc.monitor_days} d at the stated ARL0: "
        f"{result.figures[0].expected_false_alarm_fraction:.1%}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20260930)
    parser.add_argument("--arl0-days", type=float, default=365.0)
    parser.add_argument("--per-day", type=int, default=40, help="positives a day")
    parser.add_argument("--p-in", type=float, default=0.90)
    parser.add_argument("--p-out", type=float, default=0.80)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    scenario = Scenario(
        cases_per_day=args.per_day, p_in=args.p_in, p_out=args.p_out, arl0_days=args.arl0_days
    )
    result = compare(scenario, args.runs, args.seed)
    if args.json:
        print(json.dumps(asdict(result), indent=1))
    else:
        print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
