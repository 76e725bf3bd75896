"""Header-only DICOM guards: pixel budget, accepted SOP classes, symbolic-link counting."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset, dcmread

from connectors.dicom_files import (
    DEFAULT_ACCEPTED_SOP_CLASSES,
    CandidateScan,
    check_pixel_budget,
    declared_pixel_bytes,
    header_event,
    iter_candidate_files,
    parse_header,
    scan_candidate_files,
    sop_class_accepted,
)
from connectors.pixel_guard import PixelDecodeError, PixelGuard
from surveillance.core.errors import InvalidRecord

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile" / "dicom"


def _header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_pixel_budget_from_the_header() -> None:
    ds = _header(Rows=512, Columns=256, SamplesPerPixel=3, BitsAllocated=12, NumberOfFrames=10)
    assert declared_pixel_bytes(ds) == 512 * 256 * 3 * 2 * 10
    assert check_pixel_budget(ds, 512 * 256 * 3 * 2 * 10) == 512 * 256 * 3 * 2 * 10
    with pytest.raises(InvalidRecord) as caught:
        check_pixel_budget(ds, 1000)
    assert caught.value.reason == (
        f"declared pixel data of {512 * 256 * 60} bytes exceeds max_decoded_bytes 1000"
    )
    assert declared_pixel_bytes(_header(Rows=4, Columns=4, BitsAllocated=1)) == 16
    assert declared_pixel_bytes(_header(Modality="RTPLAN")) == 0  # no pixels at all
    assert declared_pixel_bytes(_header(Rows=2, Columns=2, NumberOfFrames=0)) == 4
    with pytest.raises(InvalidRecord, match="Rows is negative"):
        declared_pixel_bytes({"Rows": -1, "Columns": 2})  # any mapping-like header
    with pytest.raises(InvalidRecord, match="NumberOfFrames is not an integer"):
        declared_pixel_bytes({"Rows": 2, "Columns": 2, "NumberOfFrames": "many"})


def test_pixel_budget_at_receipt_and_in_the_decoder(tmp_path: Path) -> None:
    bomb = (CORPUS / "pixel_bomb_rle.dcm").read_bytes()
    with pytest.raises(InvalidRecord, match="declared pixel data of 3600000000 bytes"):
        parse_header(bomb)
    assert parse_header(bomb, max_decoded_bytes=None).Rows == 60000
    with pytest.raises(InvalidRecord, match="exceeds max_decoded_bytes 100"):
        header_event((CORPUS / "good_ct.dcm").read_bytes(), max_decoded_bytes=100)

    small = PixelGuard(timeout_s=60, memory_bytes=64 * 1024**2, max_decoded_bytes=64)
    with small, pytest.raises(PixelDecodeError, match="declared pixel data of 128 bytes"):
        small.decode(CORPUS / "good_ct.dcm")
    with PixelGuard(timeout_s=60, memory_bytes=64 * 1024**2) as guard:
        assert guard.max_decoded_bytes == 64 * 1024**2
        assert guard.decode(CORPUS / "good_ct.dcm").shape == (8, 8)
        with pytest.raises(PixelDecodeError, match="declares too many pixels"):
            guard.decode(CORPUS / "pixel_bomb_rle.dcm")


def test_accepted_sop_classes() -> None:
    ct, rt_plan = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.481.5"
    assert ct in DEFAULT_ACCEPTED_SOP_CLASSES and len(DEFAULT_ACCEPTED_SOP_CLASSES) == 17
    assert sop_class_accepted(ct) and sop_class_accepted(ct + "\x00")
    assert not sop_class_accepted(rt_plan) and not sop_class_accepted(None)
    assert sop_class_accepted(rt_plan, None) and sop_class_accepted(rt_plan, [rt_plan])
    plan = (CORPUS / "rt_plan.dcm").read_bytes()
    assert parse_header(plan).SOPClassUID == rt_plan  # the folder path: no SOP check by default
    with pytest.raises(InvalidRecord, match=f"SOP class {rt_plan} is not an accepted"):
        parse_header(plan, accepted_sop_classes=DEFAULT_ACCEPTED_SOP_CLASSES)
    with pytest.raises(InvalidRecord, match="not an accepted image storage class"):
        header_event(plan)
    assert header_event(plan, accepted_sop_classes=None).modality == "RTPLAN"


def test_header_event_reduces_to_the_allow_list() -> None:
    event = header_event((CORPUS / "trailing_nul_padding.dcm").read_bytes())
    assert event.manufacturer == "ACME"  # the NUL padding is gone
    assert event.age_band == "40-49" and event.patient_sex == "F"
    assert dcmread(CORPUS / "nul_manufacturer.dcm").Manufacturer == "AC\x00ME"
    with pytest.raises(InvalidRecord, match="field 'Manufacturer' contains a NUL byte"):
        header_event((CORPUS / "nul_manufacturer.dcm").read_bytes())


def test_symbolic_links_are_counted(tmp_path: Path) -> None:
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    (drop / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"x")
    (drop / "a.dcm").write_bytes(b"x")
    (drop / "sub" / "b.dcm").write_bytes(b"x")
    (drop / "link.dcm").symlink_to(outside / "secret.dcm")
    (drop / "sub" / "dangling.dcm").symlink_to(outside / "missing.dcm")
    (drop / "linkdir").symlink_to(outside, target_is_directory=True)
    (tmp_path / "root_link").symlink_to(drop, target_is_directory=True)
    expected = [drop / "a.dcm", drop / "sub" / "b.dcm"]

    assert list(iter_candidate_files([drop])) == expected  # the old generator
    scan = scan_candidate_files([drop, tmp_path / "root_link"])
    assert isinstance(scan, CandidateScan)
    assert list(scan) == expected
    assert scan.skipped_links == 4
    assert set(scan.skipped_link_paths) == {
        drop / "link.dcm",
        drop / "sub" / "dangling.dcm",
        drop / "linkdir",
        tmp_path / "root_link",
    }
    seen: list[Path] = []
    assert list(iter_candidate_files([drop], on_skipped_link=seen.append)) == expected
    assert len(seen) == 3
