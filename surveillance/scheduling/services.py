"""The long-running services ``surveillance run`` starts beside the scheduler.

Which ones run follows the configuration: the Kafka consumer when
``[kafka] bootstrap`` is set, the C-STORE receiver when ``[dicom] receive`` is
true, the drop-folder watcher when ``[dicom] drop_folder`` is set, and the
``/healthz`` ``/readyz`` ``/metrics`` server when ``[service] http_listen`` is set,
and in every replica the check worker that judges queued drift windows
(unless ``[drift] worker_poll_seconds = 0``). Each
service has ``start()`` (returns at once) and ``stop()``; the daemon starts them
in order and stops them in reverse.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path
from typing import Any, Protocol

from surveillance.core.config import DicomConfig, Settings
from surveillance.core.errors import ConfigError
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import Store

LOG = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def dicom_ssl_context(
    cert: Path | None, key: Path | None, ca: Path | None
) -> ssl.SSLContext | None:
    """The receiver's TLS context, or None for plain TCP; a clear error for half a setup."""
    from connectors.dicom_scp import server_ssl_context

    if (cert is None) != (key is None):
        raise ConfigError("the TLS certificate and private key go together; give both or neither")
    if ca is not None and cert is None:
        raise ConfigError("a TLS CA (client certificates) needs the certificate and key too")
    if cert is None or key is None:
        return None
    try:
        return server_ssl_context(cert, key, ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate, key or CA file: {exc}") from exc


def dicom_receiver(intake: Any, config: DicomConfig, *, host: str = "0.0.0.0") -> Any:
    """A C-STORE receiver configured from ``[dicom]``."""
    from connectors.dicom_scp import StorageReceiver
    from surveillance.intake.dicom import accepted_sop_classes

    try:
        return StorageReceiver(
            intake,
            ae_title=config.ae_title,
            host=host,
            port=config.port,
            allowed_calling_aets=list(config.allowed_calling_aets) or None,
            ssl_context=dicom_ssl_context(
                config.tls_certificate, config.tls_private_key, config.tls_ca_certificate
            ),
            max_bytes=config.max_file_bytes,
            accepted_sop_classes=accepted_sop_classes(config.accepted_sop_classes),
        )
    except ValueError as exc:
        raise ConfigError(f"[dicom]: {exc}") from exc


class KafkaConsumerService:
    """Runs :class:`~surveillance.intake.kafka.KafkaIngestService` in a thread."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)

    def _run(self) -> None:
        try:
            self.consumer.run(self._stop)
        except Exception:  # the daemon keeps running; the health figure shows the error
            LOG.exception("kafka consumer stopped with an error")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class CheckWorkerService:
    """Judges queued drift windows (check work units) in every replica.

    The leader's drift job queues the windows it has to judge and works on
    them itself; this worker, running in every replica, claims the same queue
    (``FOR UPDATE SKIP LOCKED``), so standbys share a large history's windows
    instead of idling. Every ``[drift] worker_poll_seconds`` it claims units
    until none is pending; an error is logged and the unit marked failed (the
    run that queued it reports it).
    """

    name = "check-worker"

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.judged = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="check-worker", daemon=True)

    def _run(self) -> None:
        from surveillance.analysis.drift import work_drift_units

        poll = self.settings.drift.worker_poll_seconds
        while not self._stop.wait(poll):
            try:
                while not self._stop.is_set():
                    checks = work_drift_units(self.store, self.settings.drift, max_units=1)
                    if not checks:
                        break
                    self.judged += 1
            except Exception:
                LOG.exception("check worker: a drift window failed")

    def start(self) -> None:
        if self.settings.drift.worker_poll_seconds > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)


def daemon_services(store: Store, settings: Settings, pseudonymizer: Pseudonymizer) -> list[Any]:
    """The connector services the configuration asks for (the scheduler is added by the caller).

    With ``[service] http_listen`` the health server comes first, so ``/healthz``
    answers while the others start and ``/readyz`` reports them as they do.
    """
    services: list[Any] = []
    if settings.service.http_listen:
        from surveillance.scheduling.health import HealthServer

        services.append(HealthServer(store, settings, settings.service.http_listen))
    services.append(CheckWorkerService(store, settings))
    if settings.kafka.bootstrap:
        from surveillance.intake.kafka import KafkaIngestService, topic_kinds

        ingestor = Ingestor.for_settings(store, pseudonymizer, settings)
        ingestor.batch_size = settings.kafka.batch_size
        consumer = KafkaIngestService(
            store,
            ingestor,
            settings,
            topics=topic_kinds(settings),
            group_id=settings.kafka.group_id,
            bootstrap=settings.kafka.bootstrap,
            max_records=settings.kafka.batch_size,
            poll_timeout_ms=settings.kafka.poll_timeout_ms,
        )
        services.append(KafkaConsumerService(consumer))
    dicom = settings.dicom
    if dicom.receive or dicom.drop_folder is not None:
        from surveillance.intake.dicom import (
            DropFolderWatcher,
            check_spool_dir,
            intake_for_settings,
            sweep_spool,
        )

        intake = intake_for_settings(store, pseudonymizer, settings)
        check_spool_dir(store, intake.spool_dir)
        sweep_spool(store, intake.spool_dir)
        if dicom.receive:
            services.append(dicom_receiver(intake, dicom))
        if dicom.drop_folder is not None:
            services.append(
                DropFolderWatcher(intake, dicom.drop_folder, dicom.drop_folder_poll_seconds)
            )
    return services


__all__ = [
    "CheckWorkerService",
    "KafkaConsumerService",
    "daemon_services",
    "dicom_receiver",
    "dicom_ssl_context",
]
