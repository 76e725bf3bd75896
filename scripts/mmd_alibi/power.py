"""MMD power on spread changes: ours (detectors.mmd) beside alibi-detect's MMDDrift default.

    .venv/bin/python scripts/mmd_alibi/power.py --runs 400                 # ours
    python3 -m venv /tmp/alibi-venv
    /tmp/alibi-venv/bin/pip install torch==2.13.0 alibi-detect==0.13.0 "numpy<2"
    /tmp/alibi-venv/bin/python scripts/mmd_alibi/power.py --runs 400 --alibi

Same seeded data for both: reference N(0, I_32), window N(0, v I_32) with
v = 1.0 (false alarms), 1.1 and 1.3 (covariance x v), n = m = 100, alpha 0.05.
alibi-detect runs with its defaults (pytorch backend, GaussianRBF with the
bandwidth inferred from the reference, unbiased MMD², 100 permutations); ours
with 200 permutations, ``bandwidth="median"`` and ``"multi"`` (the drift job's
embedding test). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

DIM, N = 32, 100
CASES = ((1.0, 5000), (1.1, 1000), (1.3, 1000))  # (variance, first seed)


def _pair(variance: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(N, DIM))
    window = rng.normal(scale=np.sqrt(variance), size=(N, DIM))
    return reference, window


def ours(runs: int) -> dict[str, dict[float, float]]:
    from detectors.mmd import MMDDetector

    out: dict[str, dict[float, float]] = {}
    for bandwidth in ("median", "multi"):
        rates = {}
        for variance, seed0 in CASES:
            alarms = 0
            for run in range(runs):
                reference, window = _pair(variance, seed0 + run)
                detector = MMDDetector(
                    n_permutations=200,
                    seed=run,
                    device="cpu",
                    bandwidth=bandwidth,
                )
                alarms += detector.fit(reference).score(window).drifted
            rates[variance] = alarms / runs
        out[f"ours-{bandwidth}"] = rates
    return out


def alibi(runs: int) -> dict[str, dict[float, float]]:
    import torch
    from alibi_detect.cd import MMDDrift

    rates = {}
    for variance, seed0 in CASES:
        alarms = 0
        for run in range(runs):
            reference, window = _pair(variance, seed0 + run)
            torch.manual_seed(run)
            detector = MMDDrift(reference.astype(np.float32), backend="pytorch", p_val=0.05)
            alarms += detector.predict(window.astype(np.float32))["data"]["is_drift"]
        rates[variance] = alarms / runs
    return {"alibi-default": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--alibi", action="store_true", help="run alibi-detect (its own venv)")
    args = parser.parse_args()
    print(json.dumps(alibi(args.runs) if args.alibi else ours(args.runs)))


if __name__ == "__main__":
    main()
