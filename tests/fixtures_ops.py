"""Fixtures for alerts and the scheduler: real receivers on loopback, a PostgreSQL store.

Fixtures
--------
http_receiver   an HTTP server thread on 127.0.0.1 (random port) that records every
                POST (path + JSON body) and can be told to fail the next N requests
smtp_sink       an aiosmtpd SMTP server on 127.0.0.1 collecting every message
pg_store        a migrated PostgreSQL store with the example model registered

Also the pieces the scheduler test runs in subprocesses: :func:`probe_job` and
:func:`scheduler_main` (``python -c "import fixtures_ops; fixtures_ops.scheduler_main(...)"``
with ``tests/`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

# ---- HTTP receiver -------------------------------------------------------------------


@dataclass
class Received:
    path: str
    body: Any


class HttpReceiver:
    """Records POSTs; ``fail_next(n, status)`` answers the next ``n`` with ``status``."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with receiver._lock:
                    status = receiver._failures.pop(0) if receiver._failures else 200
                    if status == 200:
                        receiver.requests.append(Received(self.path, json.loads(raw or b"null")))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}" if status == 200 else b'{"error": "unavailable"}')

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def fail_next(self, n: int, status: int = 503) -> None:
        with self._lock:
            self._failures.extend([status] * n)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def at(self, path: str) -> list[Any]:
        with self._lock:
            return [r.body for r in self.requests if r.path == path]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


# ---- SMTP sink --------------------------------------------------------------------------


@dataclass
class SmtpSink:
    host: str
    port: int
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    from aiosmtpd.controller import Controller

    sink = SmtpSink("127.0.0.1", _free_port())
    controller = Controller(sink, hostname=sink.host, port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# ---- PostgreSQL store -----------------------------------------------------------------


# ---- scheduler subprocess ---------------------------------------------------------------


@dataclass(frozen=True)
class ProbeContext:
    sleep_s: float
    out: Path


def probe_job(ctx: ProbeContext, scheduled_for: datetime, run_id: int) -> None:
    """Takes ``sleep_s``, then appends the scheduled time to ``<out>/<pid>.txt``."""
    import os

    time.sleep(ctx.sleep_s)
    with (ctx.out / f"{os.getpid()}.txt").open("a") as handle:
        handle.write(scheduled_for.isoformat() + "\n")


def scheduler_main(url: str, interval_s: int, sleep_s: float, out: str) -> None:
    """Run one scheduler replica with the probe job until SIGTERM."""
    import logging

    from surveillance.scheduling.daemon import Daemon
    from surveillance.scheduling.scheduler import JobSpec, SchedulerService
    from surveillance.store import Store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
    store = Store.open(url)
    service = SchedulerService(
        store,
        [JobSpec("probe", f"every {interval_s}s", probe_job, catch_up="each", max_catch_up=1000)],
        ProbeContext(sleep_s, Path(out)),
        standby_retry_s=0.2,
        heartbeat_s=0.5,
    )
    Daemon([service]).run()
    store.close()
