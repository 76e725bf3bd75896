"""The daemon: the scheduler service plus any other services, stopped cleanly on a signal.

A service is any object with ``start()`` (returns promptly; the work runs in
its own threads) and ``stop()`` (returns when it has stopped). The
:class:`Daemon` starts them in order, waits for SIGTERM or SIGINT (or
:meth:`Daemon.request_stop`), then stops them in reverse order, so the
connectors stop feeding data before the scheduler goes. A service that fails
to start stops the ones already started, and the error propagates.

A service with a ``bind(daemon)`` method is handed the daemon when it is built
(the health server uses it to report which services have started).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Protocol

LOG = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def _name(service: Service) -> str:
    return str(getattr(service, "name", type(service).__name__))


class Daemon:
    """Runs ``services`` until a signal (or :meth:`request_stop`) asks it to stop."""

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = list(services)
        self._stop = threading.Event()
        self._started: list[Service] = []
        self.stop_reason: str | None = None
        for service in self.services:  # e.g. the health server reports on the others
            bind = getattr(service, "bind", None)
            if callable(bind):
                bind(self)

    @property
    def started(self) -> tuple[Service, ...]:
        """The services started so far (in start order)."""
        return tuple(self._started)

    def request_stop(self, reason: str = "requested") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.request_stop(signal.Signals(signum).name)

    def start(self) -> None:
        for service in self.services:
            try:
                service.start()
            except BaseException:
                LOG.exception("service %s failed to start", _name(service))
                self.stop()
                raise
            self._started.append(service)
            LOG.info("service %s started", _name(service))

    def stop(self) -> None:
        while self._started:
            service = self._started.pop()
            try:
                service.stop()
                LOG.info("service %s stopped", _name(service))
            except Exception:
                LOG.exception("service %s failed to stop cleanly", _name(service))

    def run(self, *, install_signal_handlers: bool = True) -> str:
        """Start, wait for a stop request, stop; returns why it stopped."""
        previous = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self.start()
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.stop_reason or "stopped"


__all__ = ["Daemon", "Service"]
