"""The daemon's HTTP endpoints: ``/healthz``, ``/readyz`` and ``/metrics``.

Served by ``surveillance run`` when ``[service] http_listen = "HOST:PORT"`` is set
(a plain :class:`~http.server.ThreadingHTTPServer` in its own thread; nothing
else listens).

``/healthz``  200 ``ok`` while the process serves requests (liveness).
``/readyz``   200 when the database answers, its schema is at the Alembic head,
              and every other service of the daemon (Kafka consumer, C-STORE
              receiver, drop folder, scheduler) has started and its thread is
              alive; else 503 with the failing checks (JSON either way).
``/metrics``  Prometheus text format (prometheus-client), computed at scrape time:

==============================================  =========================================
metric                                          labels / meaning
==============================================  =========================================
surveillance_up                                 1 while serving
surveillance_ready                              1 when /readyz would answer 200
surveillance_ingested_records_total             source, kind: rows written this process
surveillance_dead_letters_total                 source: dead letters stored
surveillance_dead_letters_unreplayed            source: not replayed yet
surveillance_kafka_consumer_lag                 topic, partition: log end - stored offset
surveillance_kafka_stored_offset                topic, partition: next offset in the database
surveillance_job_last_success_timestamp_seconds job: end of the latest succeeded run
surveillance_job_last_run_failed                job: 1 when the latest finished run failed
surveillance_job_last_duration_seconds          job: duration of the latest finished run
                                                (drift / performance: check durations)
surveillance_open_incidents                     severity: incidents not closed
surveillance_scheduler_leader                   1 when this replica runs the scheduler
==============================================  =========================================

deploy/prometheus/surveillance-rules.yml alerts on these (no ingest, no leader, a
failing job).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from surveillance.core.config import Settings
from surveillance.core.errors import ConfigError
from surveillance.core.statuses import JobRunStatus, Severity
from surveillance.store import Store
from surveillance.store.migrations import current_revision, head_revision
from surveillance.store.models import DeadLetterRow, JobRunRow

LOG = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:9108`` listens on every interface)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"[service] http_listen {value!r}: expected HOST:PORT, e.g. 0.0.0.0:9108")
    return host or "0.0.0.0", int(port)


def _service_name(service: Any) -> str:
    return str(getattr(service, "name", type(service).__name__))


def _alive(service: Any) -> bool:
    """A service is alive when its worker thread (if it exposes one) runs."""
    for attribute in ("_thread", "thread"):
        thread = getattr(service, attribute, None)
        if isinstance(thread, threading.Thread):
            return thread.is_alive()
    return True


class HealthServer:
    """``start()``/``stop()`` service serving /healthz, /readyz and /metrics."""

    name = "http"

    def __init__(self, store: Store, settings: Settings, listen: str) -> None:
        self.store = store
        self.settings = settings
        self.host, self.port = parse_listen(listen)
        self.daemon: Any = None  # set by Daemon.bind (the services and which started)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # ---- the daemon's view -------------------------------------------------------------

    def bind(self, daemon: Any) -> None:
        self.daemon = daemon

    def _others(self) -> list[Any]:
        if self.daemon is None:
            return []
        return [s for s in self.daemon.services if s is not self]

    def _started(self) -> list[Any]:
        return [] if self.daemon is None else list(self.daemon.started)

    def scheduler(self) -> Any | None:
        return next((s for s in self._others() if hasattr(s, "is_leader")), None)

    def kafka_health(self) -> Any | None:
        for service in self._others():
            consumer = getattr(service, "consumer", None)
            if consumer is not None and hasattr(consumer, "health"):
                return consumer.health()
        return None

    # ---- checks ------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        try:
            with self.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any driver error means: not ready
            checks["database"] = f"unreachable: {type(exc).__name__}"
        if checks["database"] == "ok":
            try:
                current, head = (
                    current_revision(self.store.engine),
                    head_revision(self.store.engine),
                )
                checks["schema"] = (
                    "ok" if current == head else f"at {current}, head is {head}: run db upgrade"
                )
            except Exception as exc:
                checks["schema"] = f"unknown: {type(exc).__name__}"
        else:
            checks["schema"] = "unknown: database unreachable"
        started = self._started()
        services: dict[str, str] = {}
        for service in self._others():
            if not any(service is s for s in started):
                services[_service_name(service)] = "not started"
            elif not _alive(service):
                services[_service_name(service)] = "stopped"
            else:
                services[_service_name(service)] = "ok"
        checks["services"] = services
        ready = (
            checks["database"] == "ok"
            and checks["schema"] == "ok"
            and all(v == "ok" for v in services.values())
            and self.daemon is not None
        )
        return ready, checks

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="http-health", kwargs={"poll_interval": 0.2}
        )
        self._thread.daemon = True
        self._thread.start()
        LOG.info(
            "health and metrics on http://%s:%d (/healthz /readyz /metrics)", self.host, self.port
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _handler(health: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                ready, checks = health.readiness()
                body = json.dumps({"ready": ready, **checks}, indent=2).encode() + b"\n"
                self._send(200 if ready else 503, body, "application/json")
            elif path == "/metrics":
                try:
                    body = generate_latest(health.registry)
                except Exception as exc:
                    LOG.exception("metrics collection failed")
                    self._send(500, f"metrics failed: {exc}\n".encode(), "text/plain")
                    return
                self._send(200, body, CONTENT_TYPE)
            else:
                self._send(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain")

        def log_message(self, format: str, *args: Any) -> None:
            LOG.debug("http %s", format % args)

    return Handler


class _Collector(Collector):
    """Computes every figure at scrape time (store queries + in-process snapshots)."""

    def __init__(self, health: HealthServer) -> None:
        self.health = health

    def collect(self) -> Iterator[Any]:
        h = self.health
        yield _gauge("surveillance_up", "1 while the daemon serves requests", 1)
        ready, _ = h.readiness()
        yield _gauge("surveillance_ready", "1 when /readyz answers 200", int(ready))
        scheduler = h.scheduler()
        yield _gauge(
            "surveillance_scheduler_leader",
            "1 when this replica holds the scheduler lock and runs the jobs",
            int(bool(scheduler is not None and scheduler.is_leader)),
        )
        yield from self._ingest(h)
        yield from self._store_figures(h.store, self._job_ids(h))

    @staticmethod
    def _job_ids(h: HealthServer) -> list[str]:
        scheduler = h.scheduler()
        if scheduler is not None:
            return sorted(scheduler.jobs)
        return []

    @staticmethod
    def _ingest(h: HealthServer) -> Iterator[Any]:
        ingested = CounterMetricFamily(
            "surveillance_ingested_records",
            "Records written by this process, by source and kind",
            labels=["source", "kind"],
        )
        lag = GaugeMetricFamily(
            "surveillance_kafka_consumer_lag",
            "Kafka records not yet stored: log end offset minus the offset stored in the database",
            labels=["topic", "partition"],
        )
        stored = GaugeMetricFamily(
            "surveillance_kafka_stored_offset",
            "Next Kafka offset stored in the database",
            labels=["topic", "partition"],
        )
        kafka = h.kafka_health()
        if kafka is not None:
            counts = kafka.counts
            for kind, value in (
                ("prediction", counts.predictions_new),
                ("dicom-metadata", counts.metadata),
                ("diagnosis", counts.diagnoses_new),
                ("dead-letter", counts.dead_letters),
            ):
                ingested.add_metric(["kafka", kind], value)
            for p in kafka.partitions:
                if p.lag is not None:
                    lag.add_metric([p.topic, str(p.partition)], p.lag)
                if p.stored is not None:
                    stored.add_metric([p.topic, str(p.partition)], p.stored)
        yield ingested
        yield lag
        yield stored

    @staticmethod
    def _store_figures(store: Store, job_ids: Sequence[str]) -> Iterator[Any]:
        letters = GaugeMetricFamily(
            "surveillance_dead_letters", "Dead letters stored, by source", labels=["source"]
        )
        unreplayed = GaugeMetricFamily(
            "surveillance_dead_letters_unreplayed",
            "Dead letters not replayed yet, by source",
            labels=["source"],
        )
        with store.engine.connect() as conn:
            rows = conn.execute(
                select(
                    DeadLetterRow.source,
                    func.count(),
                    func.count().filter(DeadLetterRow.replayed_at.is_(None)),
                ).group_by(DeadLetterRow.source)
            ).all()
        for source, total, pending in rows:
            letters.add_metric([source], total)
            unreplayed.add_metric([source], pending)
        yield letters
        yield unreplayed

        success = GaugeMetricFamily(
            "surveillance_job_last_success_timestamp_seconds",
            "End of the latest succeeded run of each scheduled job (Unix time)",
            labels=["job"],
        )
        failed = GaugeMetricFamily(
            "surveillance_job_last_run_failed",
            "1 when the latest finished run of the job failed",
            labels=["job"],
        )
        duration = GaugeMetricFamily(
            "surveillance_job_last_duration_seconds",
            "Duration of the latest finished run of each job (drift/performance: the checks)",
            labels=["job"],
        )
        with store.engine.connect() as conn:
            last_ok = dict(
                conn.execute(
                    select(JobRunRow.job_id, func.max(JobRunRow.finished_at))
                    .where(JobRunRow.status == JobRunStatus.SUCCEEDED)
                    .group_by(JobRunRow.job_id)
                ).all()
            )
        seen = set(job_ids) | {str(j) for j in last_ok}
        for job in sorted(seen):
            runs = store.ledger.runs(job_id=job, limit=5)
            finished = [r for r in runs if r.finished_at is not None]
            moment = last_ok.get(job)
            if moment is not None:
                success.add_metric([job], _epoch(moment))
            if finished:
                latest = max(finished, key=lambda r: r.finished_at)  # type: ignore[arg-type,return-value]
                failed.add_metric([job], int(latest.status == JobRunStatus.FAILED))
                duration.add_metric(
                    [job],
                    (latest.finished_at - latest.started_at).total_seconds(),  # type: ignore[operator]
                )
        yield success
        yield failed
        yield duration

        incidents = GaugeMetricFamily(
            "surveillance_open_incidents",
            "Incidents not closed, by severity",
            labels=["severity"],
        )
        counts = {s.value: 0 for s in Severity}
        for incident in store.incidents.find(status="open"):
            counts[incident.severity] = counts.get(incident.severity, 0) + 1
        for severity, count in counts.items():
            incidents.add_metric([severity], count)
        yield incidents


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _epoch(moment: Any) -> float:
    if getattr(moment, "tzinfo", None) is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return float(moment.timestamp())


__all__ = ["HealthServer", "parse_listen"]
