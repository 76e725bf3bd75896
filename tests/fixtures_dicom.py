"""Fixtures for the DICOM intake: real test files from several vendors, dcmtk storescu.

Fixtures
--------
pg_store        a migrated PostgreSQL database (real server), closed afterwards
dicom_intake    a DicomIntake on ``pg_store`` spooling into ``tmp_path/spool``
receiver        a running StorageReceiver (AE "SURV", 127.0.0.1, free port) on that intake

Helpers: ``VENDOR_FILES`` (pydicom's shipped files, one per vendor/modality),
``storescu(port, files, ...)`` (groups files by transfer syntax, since storescu
only proposes a compressed syntax when told to), ``identifiers(paths)`` (the
values that must never reach the database), ``dump_database(engine)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.multival import MultiValue
from sqlalchemy import Engine, MetaData, String, cast, select

from connectors.dicom_header import ALLOWED_KEYWORDS
from connectors.dicom_scp import StorageReceiver
from surveillance.intake.dicom import DicomIntake
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store

#: (pydicom test file, vendor) — images, uncompressed and compressed, six manufacturers.
VENDOR_FILES: list[tuple[str, str]] = [
    ("CT_small.dcm", "GE MEDICAL SYSTEMS"),
    ("MR_small.dcm", "TOSHIBA_MEC"),
    ("examples_overlay.dcm", "SIEMENS"),
    ("examples_palette.dcm", "Philips Medical Systems"),
    ("examples_ybr_color.dcm", "SonoSite, Inc."),  # JPEG Baseline
    ("JPEG2000.dcm", "GE Medical Systems"),  # JPEG 2000
]

#: A storage SOP class that is not an image (12-lead ECG): refused with 0x0122.
NON_IMAGE_FILE = "waveform_ecg.dcm"

#: storescu proposes only uncompressed syntaxes unless told which compressed one.
_STORESCU_SYNTAX_FLAG = {
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}

IDENTIFIER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "StationName",
    "PatientAddress",
    "ReferringPhysicianName",
    "OtherPatientIDs",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def dicom_testfile(name: str) -> Path:
    """One of pydicom's shipped test files (offline)."""
    found = get_testdata_file(name)
    assert isinstance(found, str), f"pydicom test file {name} is missing"
    return Path(found)


def vendor_paths() -> list[Path]:
    return [dicom_testfile(name) for name, _ in VENDOR_FILES]


def require_dcmtk() -> str:
    storescu = shutil.which("storescu")
    if storescu is None:
        pytest.fail("dcmtk storescu is missing: run scripts/ensure_dcmtk.sh", pytrace=False)
    return storescu


def storescu(
    port: int,
    files: list[Path],
    *,
    called_aet: str = "SURV",
    calling_aet: str = "STORESCU",
    extra: tuple[str, ...] = (),
    timeout_s: float = 120.0,
) -> list[subprocess.CompletedProcess[str]]:
    """Send ``files`` with dcmtk storescu, one association per transfer-syntax group."""
    binary = require_dcmtk()
    groups: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(_STORESCU_SYNTAX_FLAG.get(syntax, ""), []).append(path)
    results = []
    for flag, group in groups.items():
        command = [binary, "-v", "-aet", calling_aet, "-aec", called_aet, "-nh", *extra]
        if flag:
            command.append(flag)
        command += ["127.0.0.1", str(port), *map(str, group)]
        results.append(
            subprocess.run(
                command,
                env={**os.environ, "TCP_NODELAY": "1"},
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        )
    return results


def identifiers(paths: list[Path], min_length: int = 6) -> dict[str, str]:
    """Identifier values of ``paths`` that can be grepped for without false hits.

    Left out: values shorter than ``min_length``, a single repeated character
    ("000000000"), and values contained in an allow-listed attribute that may
    be stored (InstitutionName "TOSHIBA" inside Manufacturer "TOSHIBA_MEC").
    """
    allowed_text = " ".join(
        str(dcmread(p, stop_before_pixels=True).get(k, "")) for p in paths for k in ALLOWED_KEYWORDS
    )
    found: dict[str, str] = {}
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFIER_KEYWORDS:
            value = ds.get(keyword)
            if value is None:
                continue
            values = list(value) if isinstance(value, MultiValue | list) else [value]
            for item in values:
                text = str(item).strip()
                if len(text) >= min_length and len(set(text)) > 1 and text not in allowed_text:
                    found[text] = f"{path.name} {keyword}"
                    if keyword == "PatientBirthDate" and len(text) == 8:
                        found[f"{text[:4]}-{text[4:6]}-{text[6:]}"] = f"{path.name} {keyword}"
    return found


def dump_database(engine: Engine) -> list[str]:
    """Every value of every column of every table, as text."""
    meta = MetaData()
    meta.reflect(engine)
    values: list[str] = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            columns = [cast(c, String) for c in table.columns]
            for row in conn.execute(select(*columns)):
                values.extend(str(v) for v in row if v is not None)
    return values


@pytest.fixture
def dicom_intake(pg_store: Store, tmp_path: Path) -> DicomIntake:
    ingestor = Ingestor(pg_store, Pseudonymizer(b"k" * 32))
    return DicomIntake(pg_store, ingestor, tmp_path / "spool")


@pytest.fixture
def receiver(dicom_intake: DicomIntake) -> Iterator[StorageReceiver]:
    require_dcmtk()
    scp = StorageReceiver(dicom_intake, ae_title="SURV", host="127.0.0.1", port=0)
    scp.start()
    yield scp
    scp.stop()
