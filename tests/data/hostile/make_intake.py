"""Write the Kafka-record and configuration files of the hostile corpus (+ MANIFEST entries).

Deterministic: run ``python tests/data/hostile/make_intake.py`` from the repository
root. Entries merge into MANIFEST.json like make_text.py's (other kinds are kept).

``kafka/*.bin``: one record value each, produced as-is to the topic of the entry's
``topic`` kind (prediction, dicom-metadata, diagnosis) by tests/test_hostile_corpus.py;
``good``/``bad``/``reasons`` as for the other entries.
``config/*.toml``: a configuration file; ``file_error`` is the ConfigError substring
``load_settings`` must raise (absent: the file is valid).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
UID = "1.2.826.0.1.3680043.8.498.9100"


def _prediction(**changes: Any) -> dict[str, Any]:
    record = {
        "message_id": "k-p-1",
        "model": "cxr-pneumothorax",
        "model_version": "2.1.0",
        "study_instance_uid": UID + ".1",
        "outputs": {"pneumothorax": 0.42},
        "predicted_at": "2026-08-01T10:00:00Z",
    }
    return {**record, **changes}


def _diagnosis(**changes: Any) -> dict[str, Any]:
    record = {
        "message_id": "k-d-1",
        "study_instance_uid": UID + ".1",
        "finding": "pneumothorax",
        "present": True,
        "source": "report",
        "confirmed_at": "2026-08-20T09:00:00Z",
    }
    return {**record, **changes}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


KAFKA: dict[str, tuple[str, bytes, list[str]]] = {
    # name: (topic kind, value, reasons; [] = good)
    "good_prediction.bin": ("prediction", _dumps(_prediction()), []),
    "good_diagnosis.bin": ("diagnosis", _dumps(_diagnosis()), []),
    "good_header.bin": (
        "dicom-metadata",
        _dumps(
            {
                "0020000D": {"vr": "UI", "Value": [UID + ".2"]},
                "00080070": {"vr": "LO", "Value": ["GE"]},
            }
        ),
        [],
    ),
    "bom_prediction.bin": (
        "prediction",
        b"\xef\xbb\xbf" + _dumps(_prediction(message_id="k-p-2")),
        [],
    ),
    "nul_message_id.bin": (
        "prediction",
        _dumps(_prediction(message_id="k-p-\u0000")),
        ["field 'message_id' contains a NUL byte"],
    ),
    "nul_manufacturer.bin": (
        "dicom-metadata",
        _dumps(
            {
                "0020000D": {"vr": "UI", "Value": [UID + ".3"]},
                "00080070": {"vr": "LO", "Value": ["G\u0000E"]},
            }
        ),
        ["field 'Manufacturer' contains a NUL byte"],
    ),
    "invalid_utf8.bin": ("diagnosis", b'{"message_id":"\xff\xfe"}', ["not valid UTF-8"]),
    "utf16.bin": ("prediction", "\ufeff{}".encode("utf-16-le"), ["not valid UTF-8"]),
    "deep_nesting.bin": ("prediction", b"[" * 100000, ["deeper than the limit"]),
    "not_an_object.bin": ("diagnosis", b"[1,2,3]", ["must be a JSON object"]),
    "nan_score.bin": (
        "prediction",
        _dumps(_prediction(message_id="k-p-3")).replace(b"0.42", b"NaN"),
        ["NaN is not a JSON number"],
    ),
    "year_1900.bin": (
        "prediction",
        _dumps(_prediction(message_id="k-p-4", predicted_at="1900-01-01T00:00:00Z")),
        ["before the earliest accepted time"],
    ),
    "year_9999.bin": (
        "diagnosis",
        _dumps(_diagnosis(message_id="k-d-2", confirmed_at="9999-12-31T23:59:59Z")),
        ["more than 1 day after now"],
    ),
    "unknown_finding.bin": (
        "diagnosis",
        _dumps(_diagnosis(message_id="k-d-3", finding="nodule")),
        ["unknown finding 'nodule'"],
    ),
    "duplicate_keys.bin": (
        "prediction",
        b'{"model":"a",' + _dumps(_prediction(message_id="k-p-5"))[1:],
        ["duplicate key 'model'"],
    ),
    "empty_value.bin": ("diagnosis", b"", ["not valid JSON"]),
}

GOOD_MODEL = """
[[models]]
name = "m"
version = "1"
intended_use = "x"
findings = { a = 0.5 }
[[models.baselines]]
finding = "a"
metric = "sensitivity"
value = 0.9
alert_limit = 0.8
source_document = "s"
"""

CONFIGS: dict[str, tuple[str | bytes, str | None]] = {
    "good.toml": (GOOD_MODEL, None),
    "monitor_only.toml": (
        '[[models]]\nname = "m"\nversion = "1"\nintended_use = "x"\nfindings = { a = 0.5 }\n'
        "monitor_only = true\n",
        None,
    ),
    "no_baselines.toml": (
        '[[models]]\nname = "m"\nversion = "1"\nintended_use = "x"\nfindings = { a = 0.5 }\n',
        "monitor_only = true",
    ),
    "unknown_extractor.toml": ('[embedding]\nextractor = "nonexistent"\n', "unknown extractor"),
    "typo.toml": ('[dicom]\nspool_dri = "x"\n', "unknown setting (typo?)"),
    "offset_policy.toml": (
        '[kafka]\non_offset_out_of_range = "latest"\n',
        "on_offset_out_of_range",
    ),
    "sop_class_names.toml": ('[dicom]\naccepted_sop_classes = ["CT"]\n', "accepted_sop_classes"),
    "naive_not_before.toml": ("[intake]\nnot_before = 2000-01-01T00:00:00\n", "time zone"),
    "negative_ahead.toml": ("[intake]\nmax_ahead_hours = -1\n", "max_ahead_hours"),
    "tiny_pixel_budget.toml": ("[dicom]\nmax_decoded_bytes = 1\n", "max_decoded_bytes"),
    "not_toml.toml": ("[service\n", "not valid TOML"),
    "nul_in_file.toml": (b'[service]\ndb_url = "sqlite:///\x00x"\n', "not valid TOML"),
    "deep_tables.toml": ("x = " + "[" * 2000 + "]" * 2000 + "\n", "nest too deeply"),
    "duplicate_models.toml": (GOOD_MODEL + GOOD_MODEL, "model names must be unique"),
    "invalid_utf8.toml": (b'[service]\ndb_url = "\xff"\n', "not valid TOML"),
}


def main() -> None:
    entries: dict[str, dict[str, Any]] = {}
    for name, (topic, value, reasons) in KAFKA.items():
        (HERE / "kafka" / name).write_bytes(value)
        entries[f"kafka/{name}"] = {
            "entry": "kafka",
            "topic": topic,
            "good": 0 if reasons else 1,
            "bad": len(reasons),
            "reasons": reasons,
            "note": "",
        }
    for name, (content, error) in CONFIGS.items():
        data = content.encode() if isinstance(content, str) else content
        (HERE / "config" / name).write_bytes(data)
        entry: dict[str, Any] = {"entry": "config", "good": 1, "bad": 0, "reasons": [], "note": ""}
        if error is not None:
            entry.update(good=0, file_error=error)
        entries[f"config/{name}"] = entry
    path = HERE / "MANIFEST.json"
    manifest: dict[str, Any] = json.loads(path.read_text())
    files = {k: v for k, v in manifest["files"].items() if v["entry"] not in ("kafka", "config")}
    files.update(entries)
    manifest["files"] = dict(sorted(files.items()))
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=True) + "\n")


if __name__ == "__main__":
    main()
