"""DICOM C-STORE receiver (Storage SCP) on pynetdicom.

The receiver never writes SQL and never decodes pixels. For every C-STORE
request it hands the encoded instance (DICOM Part 10 bytes: preamble, file
meta, data set as sent) to an :class:`Intake`, whose ``accept`` spools the file
(fsynced) and commits the header rows, and maps the outcome to a status:

==========================  ======  =============================================
outcome                     status  what the sender does
==========================  ======  =============================================
stored / already stored     0x0000  done (a re-sent instance is idempotent)
rejected (dead-lettered)    0xC000  gives up on this instance (malformed, too big)
intake unavailable          0xA700  *Out of Resources*: retries later
unexpected error            0xA700  retries later (and we log the traceback)
==========================  ======  =============================================

So success is answered only once the file is durable and the rows are
committed; anything that might succeed on a retry answers 0xA700.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from connectors.dicom_files import DEFAULT_MAX_BYTES, DEFLATED_TRANSFER_SYNTAXES
from connectors.events import SourcePosition

LOG = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
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
        self.counts = ReceiverCounts()
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
            return self._store(event)
        except Exception:  # never let one instance take the receiver down
            LOG.exception("C-STORE handler failed; answering Out of Resources")
            self._count("retry")
            return _status(STATUS_OUT_OF_RESOURCES, "receiver error; retry later")

    def _store(self, event: Any) -> Dataset:
        requestor = event.assoc.requestor
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
        try:
            result = self.intake.accept(data, position)
        except IntakeUnavailable as exc:
            LOG.warning("intake unavailable, asking %s to retry: %s", requestor.ae_title, exc)
            self._count("retry")
            return _status(STATUS_OUT_OF_RESOURCES, "storage unavailable; retry later")
        if result.outcome is Outcome.REJECTED:
            self._count("rejected")
            return _status(STATUS_CANNOT_UNDERSTAND, result.reason or "rejected")
        self._count("stored" if result.outcome is Outcome.STORED else "duplicate")
        return _status(STATUS_SUCCESS)


__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "Intake",
    "IntakeResult",
    "IntakeUnavailable",
    "Outcome",
    "ReceiverCounts",
    "StorageReceiver",
    "server_ssl_context",
]
