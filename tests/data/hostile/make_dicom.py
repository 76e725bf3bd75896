"""Write the DICOM files of the hostile corpus and their MANIFEST.json entries.

Deterministic (fixed UIDs, no clock): run ``python tests/data/hostile/make_dicom.py``
from the repository root. Every file is small; the "bombs" only *declare* huge
pixel data.
"""

from __future__ import annotations

import json
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, FileMetaDataset
from pydicom.dataset import FileDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
)

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "dicom"
ROOT = "1.2.826.0.1.3680043.8.498.1"  # the pydicom UID root; fixed values, no clock
CT = "1.2.840.10008.5.1.4.1.1.2"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
BUDGET = 2 * 1024**3  # connectors.dicom_files.DEFAULT_MAX_DECODED_BYTES


def dataset(sop_class: str = CT, n: int = 1, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(f"{ROOT}.{n}.3")
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(f"{ROOT}.99")
    meta.ImplementationVersionName = "HOSTILE_1"
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = f"{ROOT}.{n}.3"
    ds.StudyInstanceUID = f"{ROOT}.{n}.1"
    ds.SeriesInstanceUID = f"{ROOT}.{n}.2"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-0001"
    ds.PatientSex = "F"
    ds.PatientAge = "045Y"
    ds.StudyDate = "20260820"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Scanner 9000"
    ds.StationName = "CT01"
    ds.KVP = "120"
    ds.SliceThickness = "1.25"
    return ds


def with_pixels(ds: Dataset, rows: int = 8, columns: int = 8) -> Dataset:
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256))[: rows * columns * 2].ljust(rows * columns * 2, b"\0")
    return ds


def encoded(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def rle_fragment() -> bytes:
    """One tiny RLE frame: a header with one segment that repeats a zero byte."""
    header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)
    segment = bytes([0x81, 0x00]) * 4  # 4 x "repeat 0 128 times"
    return header + segment


def encapsulated(fragment: bytes) -> bytes:
    if len(fragment) % 2:
        fragment += b"\0"
    item = b"\xfe\xff\x00\xe0" + len(fragment).to_bytes(4, "little") + fragment
    return b"\xfe\xff\x00\xe0" + bytes(4) + item + b"\xfe\xff\xdd\xe0" + bytes(4)


def deep_sequence(levels: int) -> bytes:
    """An undefined-length ContentSequence nested ``levels`` deep (explicit VR LE)."""
    opening = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0" + bytes(4) + b"\xfe\xff\xdd\xe0" + bytes(4)
    return opening * levels + closing * levels


def entry(good: int, reasons: list[str] | None = None, note: str = "") -> dict[str, Any]:
    reasons = reasons or []
    return {"entry": "dicom", "good": good, "bad": len(reasons), "reasons": reasons, "note": note}


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}

    good = encoded(with_pixels(dataset(n=1)))
    files["good_ct.dcm"] = (good, entry(1))

    padded = with_pixels(dataset(n=2))
    padded.Manufacturer = "ACME\0"
    files["trailing_nul_padding.dcm"] = (
        encoded(padded),
        entry(1, note="trailing NUL padding is removed, not refused"),
    )

    for n, (keyword, value, reason) in enumerate(
        [
            ("Manufacturer", "AC\0ME", "field 'Manufacturer' contains a NUL byte"),
            ("PatientID", "PID\0-0001", "field 'PatientID' contains a NUL byte"),
            ("StationName", "CT\x0701", "field 'StationName' contains a control character"),
            ("SoftwareVersions", "VA10\0\0VB20", "field 'SoftwareVersions' contains a NUL"),
        ],
        start=10,
    ):
        ds = with_pixels(dataset(n=n))
        setattr(ds, keyword, value)
        files[f"nul_{keyword.lower()}.dcm"] = (encoded(ds), entry(0, [reason]))

    files["truncated_header.dcm"] = (
        good[:420],
        entry(0, ["no StudyInstanceUID"], note="cut after the file meta and a few elements"),
    )
    files["truncated_in_element.dcm"] = (
        good[: good.index(b"ACME") + 2],
        entry(0, ["no StudyInstanceUID"], note="cut in the middle of a value"),
    )
    files["truncated_pixels.dcm"] = (
        good[:-40],
        entry(1, note="the header is whole; the pixels are decoded (and refused) later"),
    )
    files["not_dicom.dcm"] = (
        b"This is a README, not a DICOM file.\n" * 8,
        entry(0, ["not a DICOM Part 10 file"]),
    )
    files["empty.dcm"] = (b"", entry(0, ["not a DICOM Part 10 file"]))
    files["preamble_only.dcm"] = (
        bytes(128) + b"DICM",
        entry(0, ["DICOM header has no SOP Class UID"]),
    )

    bomb = dataset(n=20, syntax=RLELossless)
    with_pixels(bomb)
    bomb.Rows = bomb.Columns = 60000
    bomb.BitsAllocated = bomb.BitsStored = 8
    bomb.HighBit = 7
    bomb.PixelData = encapsulated(rle_fragment())
    bomb["PixelData"].VR = "OB"
    declared = 60000 * 60000
    files["pixel_bomb_rle.dcm"] = (
        encoded(bomb),
        entry(
            0,
            [f"declared pixel data of {declared} bytes exceeds max_decoded_bytes {BUDGET}"],
            note="60000 x 60000 declared, ~100 bytes of RLE",
        ),
    )
    frames = with_pixels(dataset(n=21), 512, 512)
    frames.NumberOfFrames = 100000
    frames.PixelData = bytes(16)
    declared = 512 * 512 * 100000 * 2
    files["frames_bomb.dcm"] = (
        encoded(frames),
        entry(0, [f"declared pixel data of {declared} bytes exceeds max_decoded_bytes"]),
    )
    bad_frames = with_pixels(dataset(n=22))
    bad_frames.NumberOfFrames = 1
    element = b"\x28\x00\x08\x00IS\x02\x001 "  # (0028,0008) IS "1"
    raw = encoded(bad_frames)
    assert raw.count(element) == 1
    files["bad_number_of_frames.dcm"] = (
        raw.replace(element, b"\x28\x00\x08\x00IS\x04\x00many"),
        entry(0, ["NumberOfFrames is not an integer"]),
    )

    plan = dataset(RT_PLAN, n=30)
    plan.Modality = "RTPLAN"
    plan.RTPlanLabel = "Plan 1"
    files["rt_plan.dcm"] = (
        encoded(plan),
        entry(0, [f"SOP class {RT_PLAN} is not an accepted image storage class"]),
    )
    report = dataset(BASIC_TEXT_SR, n=31)
    report.Modality = "SR"
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = "Jane Doe, small left pneumothorax."
    report.ContentSequence = [item]
    files["basic_text_sr.dcm"] = (
        encoded(report),
        entry(0, [f"SOP class {BASIC_TEXT_SR} is not an accepted image storage class"]),
    )

    deflated = with_pixels(dataset(n=40, syntax=DeflatedExplicitVRLittleEndian))
    files["deflated.dcm"] = (encoded(deflated), entry(0, ["deflated transfer syntax"]))

    sex = with_pixels(dataset(n=41))
    sex.PatientSex = "Q"
    files["bad_sex.dcm"] = (encoded(sex), entry(0, ["PatientSex 'Q' must be M, F or O"]))
    no_study = with_pixels(dataset(n=42))
    del no_study.StudyInstanceUID
    files["no_study_uid.dcm"] = (encoded(no_study), entry(0, ["no StudyInstanceUID"]))
    age = with_pixels(dataset(n=43))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid value we want
        age.PatientAge = "45 years"
    files["bad_age.dcm"] = (encoded(age), entry(0, ["PatientAge is not a DICOM age string"]))

    nested = encoded(with_pixels(dataset(n=44)))
    at = nested.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
    files["deep_sequence.dcm"] = (
        nested[:at] + deep_sequence(1000) + nested[at:],
        entry(0, ["nests sequences too deeply"]),
    )

    for name, (data, _spec) in files.items():
        (FOLDER / name).write_bytes(data)
    entries = {f"dicom/{name}": spec for name, (_, spec) in files.items()}
    path = HERE / "MANIFEST.json"
    manifest: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"files": {}}
    kept = {k: v for k, v in manifest["files"].items() if v["entry"] != "dicom"}
    manifest["files"] = dict(sorted({**kept, **entries}.items()))
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=True) + "\n")
    print(f"wrote {len(files)} files")


if __name__ == "__main__":
    main()
