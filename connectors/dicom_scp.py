"""DICOM C-STORE receiver (Storage SCP) on pynetdicom.

The receiver never writes SQL and never decodes pixels. For every C-STORE
request it hands the encoded instance (DICOM Part 10 bytes: preamble, file
meta, data set as sent) to an :class:`Intake`, whose ``accept`` spools the file
(fsynced) and commits the header rows, and maps the outcome to a status:

=================================  ======  ======================================
outcome                            status  what the sender does
=================================  ======  ======================================
stored / already stored            0x0000  done (a re-sent instance is idempotent)
SOP class not accepted             0x0122  *SOP Class not Supported*: gives up
                                           (nothing spooled, no dead letter)
rejected (dead-lettered), or the   0xC000  *Cannot Understand*: gives up on this
intake raised InvalidRecord                instance (malformed, NUL bytes, too big,
                                           pixel bomb): a permanent failure
intake unavailable, MemoryError    0xA700  *Out of Resources*: retries later
unexpected error (a bug)           0x0110  *Processing Failure* (traceback logged)
=================================  ======  ======================================

So success is answered only once the file is durable and the rows are
committed. 0xA700 is reserved for transient failures (:class:`IntakeUnavailable`,
memory): a sender retries it, so answering it for bad content would make the
sender retry that content forever. The accepted SOP classes default to the
image storage classes (``connectors.dicom_files.DEFAULT_ACCEPTED_SOP_CLASSES``;
``accepted_sop_classes=None`` accepts every storage class). Every storage
class is still negotiated, so a non-image instance gets a clear per-instance
0x0122 instead of a failed association.

One INFO line per association when its connection closes: the calling AE
title, the number of C-STORE requests and the count per status (no UID,
patient or study value is ever logged).

Untrusted peers: an instance larger than ``max_bytes`` is refused twice: the
association is aborted as soon as its data set fragments pass the limit (so
the receiver does not buffer gigabytes first), and the handler refuses it if it
got through anyway. Optional guards: an allow-list of calling AE titles
(others are rejected at association time) and TLS (pass an ``ssl.SSLContext``;
set ``verify_mode = CERT_REQUIRED`` on it for mutual TLS). The deflated
transfer syntax is not offered (pydicom would inflate it unbounded).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from connectors.dicom_files import (
    DEFAULT_ACCEPTED_SOP_CLASSES,
    DEFAULT_MAX_BYTES,
    DEFLATED_TRANSFER_SYNTAXES,
    sop_class_accepted,
)
from surveillance.core.errors import InvalidRecord
from surveillance.core.events import SourcePosition

LOG = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

# pynetdicom logs request/response identifier data sets when these are on.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


class Outcome(enum.Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class IntakeResult:
    """What the intake did with one instance; ``reason`` says why it was rejected."""

    outcome: Outcome
    reason: str | None = None
    file_name: str | None = None


class IntakeUnavailable(Exception):
    """The spool or the database failed: nothing was kept, the sender should retry."""


class Intake(Protocol):
    def accept(self, data: bytes, position: SourcePosition) -> IntakeResult:
        """Spool and commit one DICOM Part 10 instance, or dead-letter it."""


@dataclass
class ReceiverCounts:
    """Running totals since start (read them from any thread)."""

    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    retry: int = 0
    aborted_too_large: int = 0
    refused_sop_class: int = 0
    failed: int = 0


@dataclass
class _AssociationStats:
    calling_aet: str
    started: float = field(default_factory=time.monotonic)
    statuses: Counter[int] = field(default_factory=Counter)


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:  # LO: no backslash or control characters, at most 64
        ds.ErrorComment = "".join(c if c.isprintable() and c != "\\" else " " for c in comment)[:64]
    return ds


def server_ssl_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """Server-side TLS (1.2 or later); with ``ca``, callers must present a certificate it signed.

    Raises OSError or ssl.SSLError when a file cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class StorageReceiver:
    """A Storage SCP that feeds an :class:`Intake`. ``start()``/``stop()`` don't block.

    ``port=0`` picks a free port; read it back from :attr:`port` after ``start()``.
    """

    def __init__(
        self,
        intake: Intake,
        *,
        ae_title: str = "SURVEILLANCE",
        host: str = "0.0.0.0",
        port: int = 11112,
        allowed_calling_aets: Sequence[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        maximum_associations: int = 10,
        network_timeout_s: float = 60.0,
        accepted_sop_classes: Collection[str] | None = DEFAULT_ACCEPTED_SOP_CLASSES,
    ) -> None:
        if not 1 <= len(ae_title.strip()) <= 16:
            raise ValueError(f"'ae_title' must be 1 to 16 characters, got {ae_title!r}")
        if max_bytes < 1024:
            raise ValueError(f"'max_bytes' must be >= 1024, got {max_bytes}")
        if allowed_calling_aets is not None and not allowed_calling_aets:
            raise ValueError(
                "'allowed_calling_aets' must name at least one AE title (or be None for any)"
            )
        self.intake = intake
        self.ae_title = ae_title
        self.host = host
        self._port = port
        self.max_bytes = max_bytes
        self.accepted_sop_classes = (
            None if accepted_sop_classes is None else frozenset(accepted_sop_classes)
        )
        self.counts = ReceiverCounts()
        self._associations: dict[int, _AssociationStats] = {}
        self._counts_lock = threading.Lock()
        self._received: dict[int, int] = {}  # association id -> data set bytes so far
        self._ssl_context = ssl_context
        self._server: ThreadedAssociationServer | None = None

        ae = AE(ae_title=ae_title)
        ae.maximum_associations = maximum_associations
        ae.network_timeout = network_timeout_s
        syntaxes = [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in DEFLATED_TRANSFER_SYNTAXES]
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        if allowed_calling_aets is not None:
            ae.require_calling_aet = [a.strip() for a in allowed_calling_aets]
        self._ae = ae

    @property
    def port(self) -> int:
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen in background threads (one per association)."""
        if self._server is not None:
            raise RuntimeError("the receiver is already running")
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        try:
            self._server = self._ae.start_server(
                (self.host, self._port),
                block=False,
                evt_handlers=handlers,
                ssl_context=self._ssl_context,
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {self.host}:{self._port}: {exc.strerror}"
            ) from exc
        LOG.info("DICOM receiver %s listening on %s:%d", self.ae_title, self.host, self.port)

    def stop(self) -> None:
        """Stop listening and end open associations (in-flight instances get no reply)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server = None
        self._ae.shutdown()

    def __enter__(self) -> StorageReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- handlers (run in the association threads) ------------------------------

    def _count(self, field: str) -> None:
        with self._counts_lock:
            setattr(self.counts, field, getattr(self.counts, field) + 1)

    def _on_open(self, event: Any) -> None:
        # Nagle + delayed ACK costs ~40 ms per small response; send replies at once.
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP, or already closed
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_close(self, event: Any) -> None:
        self._received.pop(id(event.assoc), None)
        with self._counts_lock:
            stats = self._associations.pop(id(event.assoc), None)
        if stats is not None:
            log_association(stats.calling_aet, stats.statuses, time.monotonic() - stats.started)

    def _on_accepted(self, event: Any) -> None:
        with self._counts_lock:
            self._associations.setdefault(id(event.assoc), _AssociationStats(_calling_aet(event)))

    def _record_status(self, event: Any, status: int) -> None:
        key = id(event.assoc)
        with self._counts_lock:
            stats = self._associations.get(key)
            if stats is None:
                stats = self._associations[key] = _AssociationStats(_calling_aet(event))
            stats.statuses[status] += 1

    def _on_pdu(self, event: Any) -> None:
        """Abort an association whose current data set passes ``max_bytes``."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        key = id(event.assoc)
        total = self._received.get(key, 0)
        if total < 0:  # already aborting this association
            return
        for item in items:
            data = item.data or b""
            if not data:
                continue
            if data[0] & 1:  # a command fragment starts the next message
                total = 0
            else:
                total += len(data) - 1
        self._received[key] = total
        if total > self.max_bytes:
            LOG.warning(
                "aborting association from %s: data set over %d bytes",
                event.assoc.requestor.ae_title,
                self.max_bytes,
            )
            self._received[key] = -1
            self._count("aborted_too_large")
            event.assoc.abort(block=False)

    def _on_store(self, event: Any) -> Dataset:
        try:
            answer = self._store(event)
        except (IntakeUnavailable, MemoryError) as exc:  # transient: the sender retries
            LOG.warning("C-STORE: intake unavailable, asking the sender to retry: %s", exc)
            self._count("retry")
            answer = _status(STATUS_OUT_OF_RESOURCES, "storage unavailable; retry later")
        except InvalidRecord as exc:  # permanent: this content will never be accepted
            self._count("rejected")
            answer = _status(STATUS_CANNOT_UNDERSTAND, exc.reason)
        except Exception:  # never let one instance take the receiver down
            LOG.exception("C-STORE handler failed; answering Processing Failure")
            self._count("failed")
            answer = _status(STATUS_PROCESSING_FAILURE, "receiver error")
        with contextlib.suppress(Exception):
            self._record_status(event, int(answer.Status))
        return answer

    def _store(self, event: Any) -> Dataset:
        requestor = event.assoc.requestor
        sop_class = getattr(event.request, "AffectedSOPClassUID", None)
        if not sop_class_accepted(
            None if sop_class is None else str(sop_class), self.accepted_sop_classes
        ):
            self._count("refused_sop_class")
            return _status(STATUS_SOP_CLASS_NOT_SUPPORTED, "SOP class not supported")
        position = SourcePosition(
            "dicom",
            f"{requestor.ae_title}@{requestor.address}:{requestor.port}",
            None,
            int(event.request.MessageID),
        )
        stream = event.encoded_dataset(include_meta=False)
        if len(stream) > self.max_bytes:
            self._count("rejected")
            return _status(STATUS_CANNOT_UNDERSTAND, f"instance over {self.max_bytes} bytes")
        data = event.encoded_dataset(include_meta=True)
        result = self.intake.accept(data, position)
        if result.outcome is Outcome.REJECTED:
            self._count("rejected")
            return _status(STATUS_CANNOT_UNDERSTAND, result.reason or "rejected")
        self._count("stored" if result.outcome is Outcome.STORED else "duplicate")
        return _status(STATUS_SUCCESS)


def _calling_aet(event: Any) -> str:
    title = getattr(event.assoc.requestor, "ae_title", "")
    if isinstance(title, bytes):
        title = title.decode("ascii", "replace")
    return "".join(c if c.isprintable() else "?" for c in str(title).strip())[:16] or "?"


def log_association(calling_aet: str, statuses: Counter[int], duration_s: float) -> None:
    """The one INFO line per association: AE title, instances, statuses (no PHI)."""
    shown = ", ".join(f"0x{code:04X}={n}" for code, n in sorted(statuses.items())) or "none"
    LOG.info(
        "DICOM association from %s closed after %.1f s: %d instance(s), statuses %s",
        calling_aet,
        duration_s,
        sum(statuses.values()),
        shown,
    )


__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_SOP_CLASS_NOT_SUPPORTED",
    "STATUS_SUCCESS",
    "Intake",
    "IntakeResult",
    "IntakeUnavailable",
    "Outcome",
    "ReceiverCounts",
    "StorageReceiver",
    "log_association",
    "server_ssl_context",
]
