"""Step 2: our CBPE (raw and isotonic-calibrated on the reference) vs NannyML, recall MAE.

.venv/bin/python scripts/nannyml_cbpe/compare_ours.py
"""

import json

import numpy as np
import pandas as pd

from detectors.cbpe import Calibrator, estimate_performance

ref = pd.read_csv("/tmp/nm/ref.csv")
ana = pd.read_csv("/tmp/nm/ana.csv")
with open("/tmp/nm/nannyml.json") as handle:
    nm = np.array(json.load(handle)["nannyml_recall"])
t = 0.475
assert ((ana.y_pred_proba >= t).astype(int) == ana.y_pred).all()
cal = Calibrator().fit(ref.y_pred_proba.to_numpy(), ref.work_home_actual.to_numpy())
real, raw, calibrated = [], [], []
for i in range(0, len(ana), 5000):
    c = ana.iloc[i : i + 5000]
    s = c.y_pred_proba.to_numpy()
    y = c.work_home_actual.to_numpy()
    real.append(((s >= t) & (y == 1)).sum() / (y == 1).sum())
    raw.append(estimate_performance(s, t).sensitivity.value)
    calibrated.append(estimate_performance(s, t, calibrator=cal).sensitivity.value)
real, raw, calibrated = map(np.array, (real, raw, calibrated))
out = {
    "chunks": len(real),
    "mae_ours_raw": float(np.abs(raw - real).mean()),
    "mae_ours_calibrated": float(np.abs(calibrated - real).mean()),
    "mae_nannyml": float(np.abs(nm - real).mean()),
    "max_abs_diff_ours_calibrated_vs_nannyml": float(np.abs(calibrated - nm).max()),
}
print(json.dumps(out, indent=1))
