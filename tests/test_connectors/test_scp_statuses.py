"""The C-STORE status mapping of connectors.dicom_scp, against an in-process pynetdicom SCU.

No database and no dcmtk: a fake Intake decides the outcome, so each row of the
status table (success, SOP class refused, permanent rejection, transient
failure, bug) is answered as documented, and one PHI-free line is logged per
association.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from connectors.dicom_scp import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    STATUS_SUCCESS,
    IntakeResult,
    IntakeUnavailable,
    Outcome,
    StorageReceiver,
)
from surveillance.core.errors import InvalidRecord
from surveillance.core.events import SourcePosition

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile" / "dicom"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"


class FakeIntake:
    def __init__(self) -> None:
        self.behaviour: Callable[[bytes], IntakeResult] = lambda data: IntakeResult(Outcome.STORED)
        self.calls = 0

    def accept(self, data: bytes, position: SourcePosition) -> IntakeResult:
        self.calls += 1
        return self.behaviour(data)


@pytest.fixture
def intake() -> FakeIntake:
    return FakeIntake()


@pytest.fixture
def receiver(intake: FakeIntake) -> Iterator[StorageReceiver]:
    with StorageReceiver(intake, ae_title="SURV", host="127.0.0.1", port=0) as scp:
        yield scp


def _dataset(name: str) -> Dataset:
    return dcmread(CORPUS / name)


def _send(port: int, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="MODALITY1")
    for uid in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SURV")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()
        ae.shutdown()


def _raise(error: Exception) -> Callable[[bytes], IntakeResult]:
    def behaviour(data: bytes) -> IntakeResult:
        raise error

    return behaviour


def test_status_per_outcome(
    receiver: StorageReceiver, intake: FakeIntake, caplog: pytest.LogCaptureFixture
) -> None:
    ct, plan = _dataset("good_ct.dcm"), _dataset("rt_plan.dcm")
    caplog.set_level(logging.INFO, logger="connectors.dicom_scp")

    assert _send(receiver.port, [ct, plan]) == [STATUS_SUCCESS, STATUS_SOP_CLASS_NOT_SUPPORTED]
    assert intake.calls == 1  # the RT plan never reached the intake
    assert receiver.counts.refused_sop_class == 1

    intake.behaviour = lambda data: IntakeResult(Outcome.REJECTED, "field 'x' contains a NUL")
    assert _send(receiver.port, [ct]) == [STATUS_CANNOT_UNDERSTAND]
    intake.behaviour = _raise(InvalidRecord("declared pixel data of 1 bytes exceeds ..."))
    assert _send(receiver.port, [ct]) == [STATUS_CANNOT_UNDERSTAND]
    intake.behaviour = _raise(IntakeUnavailable("database: gone"))
    assert _send(receiver.port, [ct]) == [STATUS_OUT_OF_RESOURCES]
    intake.behaviour = _raise(RuntimeError("a bug"))
    assert _send(receiver.port, [ct]) == [STATUS_PROCESSING_FAILURE]
    intake.behaviour = lambda data: IntakeResult(Outcome.DUPLICATE)
    assert _send(receiver.port, [ct, ct]) == [STATUS_SUCCESS, STATUS_SUCCESS]

    counts = receiver.counts
    assert (counts.stored, counts.duplicate, counts.rejected, counts.retry, counts.failed) == (
        1,
        2,
        2,
        1,
        1,
    )

    def association_lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "connectors.dicom_scp" and "association from" in r.getMessage()
        ]

    deadline = time.monotonic() + 10  # logged when the server side closes the connection
    while len(association_lines()) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = association_lines()
    assert len(lines) == 6, lines
    assert "from MODALITY1" in lines[0] and "2 instance(s)" in lines[0]
    assert "0x0000=1, 0x0122=1" in lines[0]
    assert "0xC000=1" in lines[1] and "0xA700=1" in lines[3] and "0x0110=1" in lines[4]
    text = "\n".join(lines)
    for secret in (str(ct.StudyInstanceUID), str(ct.SOPInstanceUID), "Doe", "PID-0001"):
        assert secret not in text


def test_accepted_sop_classes_none_accepts_everything(intake: FakeIntake) -> None:
    with StorageReceiver(
        intake, ae_title="SURV", host="127.0.0.1", port=0, accepted_sop_classes=None
    ) as scp:
        assert _send(scp.port, [_dataset("rt_plan.dcm")]) == [STATUS_SUCCESS]
    with StorageReceiver(
        intake, ae_title="SURV", host="127.0.0.1", port=0, accepted_sop_classes=[RT_PLAN]
    ) as scp:
        statuses = _send(scp.port, [_dataset("rt_plan.dcm"), _dataset("good_ct.dcm")])
        assert statuses == [STATUS_SUCCESS, STATUS_SOP_CLASS_NOT_SUPPORTED]
