"""surveillance.core.phi_logging: UIDs and quoted DICOM values never reach the log text."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from io import BytesIO, StringIO

import pytest
from pydicom import Dataset, config, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from surveillance.core.phi_logging import (
    PhiRedactingFilter,
    install_phi_filter,
    redact,
    uninstall_phi_filter,
)

BAD_UID = "1.2.826.0.1.3680043.8.498.4242.x7"  # invalid UI: a letter in it


def _file_with_invalid_uid() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.826.0.1.3680043.8.498.4242.1")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.PatientName = "Doe^Jane"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    valid = b"1.2.826.0.1.3680043.8.498.4242.1"
    data = buffer.getvalue()
    # add StudyInstanceUID (0020,000D) with an invalid value, bypassing validation
    value = BAD_UID.encode() + b"\x00" * (len(BAD_UID) % 2)
    element = b"\x20\x00\x0d\x00UI" + len(value).to_bytes(2, "little") + value
    assert valid in data
    return data + element


@pytest.fixture
def captured() -> Iterator[StringIO]:
    """Everything the root logger writes, as text, with the filter installed."""
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            install_phi_filter()
            try:
                yield stream
            finally:
                logging.captureWarnings(False)
                uninstall_phi_filter()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_a_real_pydicom_warning_is_redacted(captured: StringIO) -> None:
    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.WARN
    try:
        ds = dcmread(BytesIO(_file_with_invalid_uid()))
        assert str(ds.StudyInstanceUID) == BAD_UID  # converting the value warns
    finally:
        config.settings.reading_validation_mode = mode
    text = captured.getvalue()
    assert "Invalid value for VR UI" in text
    assert "py.warnings" in text  # the UserWarning went through logging too
    assert "pydicom WARNING" in text
    assert BAD_UID not in text
    assert "1.2.826.0.1.3680043" not in text
    assert "<value:" in text or "<uid:" in text


def test_child_loggers_and_exceptions_are_redacted(captured: StringIO) -> None:
    logging.getLogger("pynetdicom.assoc").warning("Study %s refused", "1.2.3.4.5.6")
    late = logging.getLogger("pynetdicom.brand_new_child")
    late.info("(0010,0010) Patient's Name PN: 'Doe^Jane'")
    logging.getLogger("connectors.other").info("not ours: 1.2.3.4.5.6")
    try:
        raise ValueError("Invalid value for VR PN: 'Doe^Jane'")
    except ValueError:
        logging.getLogger("pydicom").exception("failed on 1.2.3.4.5.7")
    text = captured.getvalue()
    assert "Doe^Jane" not in text
    assert "1.2.3.4.5.7" not in text
    assert text.count("1.2.3.4.5.6") == 1 and "connectors.other" in text  # other loggers kept
    assert "pynetdicom.assoc WARNING Study <uid:" in text


def test_redact_is_stable_and_keeps_the_rest() -> None:
    once = redact("Invalid value for VR UI: '1.2.840.99.1.2.3'. see 1.2.840.99.1.2.3")
    tags = re.findall(r"<uid:[0-9a-f]{8}>", once)
    assert len(tags) == 2 and tags[0] == tags[1]
    assert redact("(0010,0010) PN [Doe^John] # 8") == redact("(0010,0010) PN [Doe^John] # 8")
    assert "Doe" not in redact("element PN [Doe^John]")
    assert redact("3 instances, 0x0000=3") == "3 instances, 0x0000=3"
    assert redact("value 'abc' and Value: \"def\"").count("<value:") == 2


def test_filter_scoped_by_prefix() -> None:
    record = logging.LogRecord(
        "pynetdicom.x", logging.INFO, __file__, 1, "uid %s", ("1.2.3.4",), None
    )
    other = logging.LogRecord("ours", logging.INFO, __file__, 1, "uid %s", ("1.2.3.4",), None)
    scoped = PhiRedactingFilter(["pynetdicom"])
    assert scoped.filter(record) and scoped.filter(other)
    assert "1.2.3.4" not in record.getMessage() and other.getMessage() == "uid 1.2.3.4"
