"""Step 1 of the CBPE side-by-side: run in a separate venv with nannyml 0.13.1.

    python3 -m venv /tmp/nannyml-venv
    /tmp/nannyml-venv/bin/pip install nannyml==0.13.1 statsmodels
    mkdir -p /tmp/nm && /tmp/nannyml-venv/bin/python scripts/nannyml_cbpe/export_nannyml.py

Writes NannyML's synthetic binary dataset (reference, analysis with targets) and
NannyML's CBPE recall estimate per 5,000-row chunk to /tmp/nm.
"""

import json

import nannyml as nml

ref, ana, tgt = nml.load_synthetic_binary_classification_dataset()
ana = ana.merge(tgt, on="id")
ref[["y_pred_proba", "y_pred", "work_home_actual"]].to_csv("/tmp/nm/ref.csv", index=False)
ana[["y_pred_proba", "y_pred", "work_home_actual"]].to_csv("/tmp/nm/ana.csv", index=False)
est = nml.CBPE(
    y_pred_proba="y_pred_proba",
    y_pred="y_pred",
    y_true="work_home_actual",
    problem_type="classification_binary",
    metrics=["recall"],
    chunk_size=5000,
)
est.fit(ref)
res = est.estimate(ana).filter(period="analysis").to_df()
vals = res[("recall", "value")].to_numpy()
with open("/tmp/nm/nannyml.json", "w") as handle:
    json.dump({"nannyml_recall": vals.tolist()}, handle)
print(len(ref), len(ana), vals[:3])
