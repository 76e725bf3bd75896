"""The Kafka intake: poll the three topics, write batches with their offsets.

:class:`KafkaIngestService` runs one consumer-group member. Its loop polls a
batch from :class:`connectors.kafka.KafkaSource`, splits it by partition over
``writers`` writer threads (a partition always goes to the same writer, so its
batches are written in offset order) and each writer calls
:meth:`Ingestor.ingest_raw` with the consumer group: rows, dead letters and the
next offsets commit in one transaction. While one writer waits on PostgreSQL
the poll thread decodes the next batch, which is where the throughput comes
from on a small machine.

Batch sizes (issue 11): ``max_records`` is the most records one writer
commits in one transaction; a poll takes up to ``writers x max_records``, so
each writer's share of a poll is a full transaction, not a fraction of one
(per-transaction work, the commit and the study upsert, is what a small
transaction pays for). The poll loop keeps no per-record state: partitions
arrive as lists in offset order, so their first and last offsets are read at
the ends (:meth:`connectors.kafka.KafkaSource.poll_partitions`).

Failures never end the loop:

* a database error (:class:`~surveillance.core.errors.StoreError`) makes the writer
  retry the same records with exponential backoff; meanwhile fetching is
  paused (the consumer keeps its group membership) so memory stays bounded;
* a Kafka error closes the consumer and opens a new one after a backoff; it
  seeks to the offsets in the database again.

On a rebalance the revoked partitions' writes in flight are finished before
another member may start on them. A write that outlives that wait (the
database is down) is still safe: every batch covers its partition contiguously
from the last stored offset and writes are idempotent, so a late commit can
only make a later reader re-read rows it will ignore.

Offsets out of range (issue 12): when the broker lost its log or a topic was
recreated, the stored next offset can lie beyond the log end (the consumer
would wait there forever, showing "lag 0") or before the log start (records
deleted unread), or the broker resets the position itself (records arrive
below the stored offset). Each is detected (on every end-offset refresh and on
every poll), raises an ``intake`` incident per registered model (which the
alert job pages like any other incident), is logged as an error, and then
``[kafka] on_offset_out_of_range`` applies: ``"earliest"`` (default) stores and
seeks the log start and goes on (re-reading is idempotent); ``"stop"`` stops
the consumer (state ``stopped``, :attr:`KafkaIngestService.halted` says why).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import datetime

from kafka import TopicPartition
from kafka.errors import KafkaError

from connectors.kafka import KafkaSource, KafkaSourceError, PartitionKey
from connectors.records import parse_json, parse_jsonl_line
from surveillance.core.config import Settings
from surveillance.core.errors import ConfigError, InvalidRecord, StoreError
from surveillance.core.events import Event, RawRecord
from surveillance.core.statuses import Severity, SignalKind, VigilanceClass
from surveillance.intake.ingest import Ingestor, collector_spared
from surveillance.store import IngestBatch, IngestCounts, Store
from surveillance.store.domain import DeadLetter
from surveillance.store.incidents import IncidentSignal
from surveillance.store.types import utcnow

log = logging.getLogger(__name__)

SourceFactory = Callable[["KafkaIngestService"], KafkaSource]


def topic_kinds(settings: Settings) -> dict[str, str]:
    """Topic name -> event kind, from ``[kafka]``."""
    k = settings.kafka
    return {
        k.predictions_topic: "prediction",
        k.metadata_topic: "dicom-metadata",
        k.diagnoses_topic: "diagnosis",
    }


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    """Where one assigned partition stands.

    ``stored`` is the next offset stored in the database (None before the
    first write or lookup), ``end`` the log-end offset last read from the
    broker, ``lag`` = end - stored (records not yet in the database).
    """

    topic: str
    partition: int
    stored: int | None
    end: int | None
    lag: int | None


@dataclass(frozen=True, slots=True)
class KafkaHealth:
    """A snapshot of the consumer for ``surveillance kafka lag`` and the daemon."""

    group: str
    state: str  # starting | running | paused | backing-off | stopped
    partitions: tuple[PartitionHealth, ...]
    records_written: int
    counts: IngestCounts
    consecutive_failures: int
    last_error: str | None
    last_error_at: datetime | None
    last_write_at: datetime | None

    @property
    def total_lag(self) -> int | None:
        lags = [p.lag for p in self.partitions]
        return (
            None
            if not lags or any(lag is None for lag in lags)
            else sum(lag for lag in lags if lag is not None)
        )


class _Stopped(Exception):
    """A writer gave up its batch because the service is stopping."""


@dataclass
class _Lane:
    """One writer thread; batches of a partition always land on the same lane."""

    executor: ThreadPoolExecutor
    pending: deque[Future[IngestCounts]] = field(default_factory=deque)

    def prune(self) -> None:
        while self.pending and self.pending[0].done():
            self.pending.popleft().result()  # re-raises a writer's unexpected error


class KafkaIngestService:
    """One consumer-group member writing the three topics into the store.

    ``settings.kafka`` gives the bootstrap servers, group and topic names;
    ``topics``/``group_id`` override them (the ingest benchmark uses its own).
    """

    def __init__(
        self,
        store: Store,
        ingestor: Ingestor,
        settings: Settings,
        *,
        topics: Mapping[str, str] | None = None,
        group_id: str | None = None,
        bootstrap: str | None = None,
        writers: int = 2,
        max_pending: int = 2,
        max_records: int = 5000,
        poll_timeout_ms: int = 500,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 3000,
        check_crcs: bool = False,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        refresh_models_s: float = 60.0,
        end_offsets_s: float = 5.0,
        revoke_wait_s: float = 5.0,
        source_factory: SourceFactory | None = None,
    ) -> None:
        if writers < 1 or max_pending < 1:
            raise ValueError("'writers' and 'max_pending' must be >= 1")
        self.store = store
        self.ingestor = ingestor
        self.topics = dict(topics) if topics is not None else topic_kinds(settings)
        self.group = group_id or settings.kafka.group_id
        self.bootstrap = bootstrap or settings.kafka.bootstrap
        if source_factory is None and not self.bootstrap:
            raise ConfigError(
                "no Kafka bootstrap servers: set SURVEILLANCE_KAFKA_BOOTSTRAP or "
                "[kafka] bootstrap in the configuration file"
            )
        self.max_pending = max_pending
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.check_crcs = check_crcs
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.refresh_models_s = refresh_models_s
        self.end_offsets_s = end_offsets_s
        self.revoke_wait_s = revoke_wait_s
        self._source_factory = source_factory or KafkaIngestService._default_source
        self._lanes = [
            _Lane(ThreadPoolExecutor(1, thread_name_prefix=f"kafka-writer-{i}"))
            for i in range(writers)
        ]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._source: KafkaSource | None = None
        self._state = "starting"
        self._assigned: set[PartitionKey] = set()
        self._stored: dict[PartitionKey, int] = {}
        self._ends: dict[PartitionKey, int] = {}
        self._records_written = 0
        self._counts = IngestCounts()
        self._failures = 0
        self._last_error: str | None = None
        self._last_error_at: datetime | None = None
        self._last_write_at: datetime | None = None
        self._paused = False
        self._next_models_refresh = time.monotonic() + refresh_models_s
        self._next_end_offsets = 0.0
        self._first_record_at: float | None = None
        self.on_offset_out_of_range = settings.kafka.on_offset_out_of_range
        self._out_of_range: set[PartitionKey] = set()  # reported, not yet recovered
        self.offset_problems = 0
        self.halted: str | None = None

    # ---- the source ------------------------------------------------------------

    def _default_source(self) -> KafkaSource:
        assert self.bootstrap is not None
        return KafkaSource(
            self.bootstrap,
            self.group,
            self.topics,
            self._lookup_offsets,
            on_revoke=self._on_revoke,
            max_records=self.max_records * len(self._lanes),  # one transaction per writer
            poll_timeout_ms=self.poll_timeout_ms,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            check_crcs=self.check_crcs,
        )

    def _lookup_offsets(self, keys: Collection[PartitionKey]) -> dict[PartitionKey, int]:
        """Called on kafka-python's IO thread when partitions are assigned."""
        found = self.store.events.offsets(self.group, keys)
        with self._lock:
            self._assigned |= set(keys)
            for key in keys:
                if key in found:
                    self._stored[key] = found[key]
                else:
                    self._stored.pop(key, None)
        return found

    def _on_revoke(self, keys: set[PartitionKey]) -> None:
        """Finish writes in flight before another member may start on ``keys``."""
        pending = [f for lane in self._lanes for f in lane.pending if not f.done()]
        if pending:
            _, late = wait_futures(pending, timeout=self.revoke_wait_s)
            if late:
                log.warning(
                    "kafka: %d write(s) still in flight after a %.0fs wait on revoke of %s",
                    len(late),
                    self.revoke_wait_s,
                    sorted(keys),
                )
        if not self._stop.is_set():  # on close, keep the last assignment for health()
            with self._lock:
                self._assigned -= keys

    # ---- writing -----------------------------------------------------------------

    def _parse(self, raw: RawRecord) -> Event:
        if raw.kind is None:
            raise InvalidRecord("record has no kind (topic not configured)")
        return parse_json(
            raw.data,
            raw.kind,
            raw.position,
            bounds=self.ingestor.bounds,
            known_findings=self.ingestor.known_findings,
        )

    def _lane_for(self, key: PartitionKey) -> _Lane:
        topic_index = sorted(self.topics).index(key[0]) if key[0] in self.topics else 0
        return self._lanes[(key[1] + topic_index) % len(self._lanes)]

    def _write(
        self, records: list[RawRecord], next_offsets: Mapping[PartitionKey, int]
    ) -> IngestCounts:
        """Runs on a writer thread: retries the same records until they are stored.

        ``next_offsets``: per partition, the offset after the last of ``records``.
        """
        delay = self.backoff_initial_s
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                counts = self.ingestor.ingest_raw(records, self._parse, consumer_group=self.group)
            except StoreError as exc:
                self._failed(f"database: {exc}")
                if self._stop.wait(delay):
                    raise _Stopped from exc
                delay = min(delay * 2, self.backoff_max_s)
                continue
            self._written(len(records), counts, next_offsets)
            return counts

    def _written(
        self, records: int, counts: IngestCounts, next_offsets: Mapping[PartitionKey, int]
    ) -> None:
        with self._lock:
            for key, offset in next_offsets.items():
                if offset > self._stored.get(key, -1):
                    self._stored[key] = offset
            self._records_written += records
            self._counts += counts
            self._failures = 0
            self._last_write_at = utcnow()
            if self._state == "backing-off":
                self._state = "running"

    def _failed(self, message: str) -> None:
        log.warning("kafka intake: %s", message)
        with self._lock:
            self._failures += 1
            self._last_error = message[:500]
            self._last_error_at = utcnow()
            self._state = "backing-off"

    def _dispatch(self, batches: Mapping[PartitionKey, Sequence[RawRecord]]) -> None:
        """Hand each partition's records to its lane (whole partitions, no pass per record)."""
        by_lane: dict[int, tuple[list[RawRecord], dict[PartitionKey, int]]] = {}
        for key, part in batches.items():
            records, next_offsets = by_lane.setdefault(id(self._lane_for(key)), ([], {}))
            records.extend(part)
            last = part[-1].position.offset
            if last is not None:
                next_offsets[key] = last + 1
        for lane in self._lanes:
            entry = by_lane.get(id(lane))
            if entry is not None:
                lane.pending.append(lane.executor.submit(self._write, *entry))

    def _backlogged(self) -> bool:
        for lane in self._lanes:
            lane.prune()
        return any(len(lane.pending) >= self.max_pending for lane in self._lanes)

    def pending_writes(self) -> int:
        for lane in self._lanes:
            lane.prune()
        return sum(len(lane.pending) for lane in self._lanes)

    # ---- the loop --------------------------------------------------------------------

    def run_once(self) -> int:
        """One poll: dispatch what came; pause fetching while writers are behind.

        Opens the Kafka source if needed. Raises KafkaSourceError (the caller
        closes and backs off) and StoreError from the periodic model refresh.
        """
        if self._source is None:
            self._source = self._source_factory(self)
            self._paused = False
        source = self._source
        timeout_ms: int | None = None
        if self._backlogged():
            if not self._paused:
                source.pause()
                self._paused = True
            # Wait for a writer, not for the broker: a paused poll would only sleep.
            oldest = [lane.pending[0] for lane in self._lanes if lane.pending]
            wait_futures(oldest, timeout=self.poll_timeout_ms / 1000, return_when=FIRST_COMPLETED)
            timeout_ms = 0  # still poll: it keeps the group membership alive
        elif self._paused:
            source.resume()
            self._paused = False
        batches = source.poll_partitions(timeout_ms)
        polled = sum(map(len, batches.values()))
        if polled:
            self._check_positions(batches)
            if self._first_record_at is None:
                self._first_record_at = time.monotonic()
            self._dispatch(batches)
        with self._lock:
            if self._state in ("starting", "paused", "running"):
                self._state = "paused" if self._paused else "running"
        now = time.monotonic()
        if now >= self._next_end_offsets:
            self._next_end_offsets = now + self.end_offsets_s
            self.refresh_end_offsets()
        if now >= self._next_models_refresh:
            self._next_models_refresh = now + self.refresh_models_s
            self.ingestor.refresh_models()  # a model registered since start stops dead-lettering
        return polled

    def refresh_end_offsets(self) -> None:
        if self._source is None:
            return
        with self._lock:
            assigned = set(self._assigned)
        try:
            ends = self._source.end_offsets(assigned)
        except KafkaSourceError as exc:
            log.info("kafka: %s", exc)
            return
        with self._lock:
            self._ends.update(ends)
        if not self._stop.is_set():
            self.check_offset_range(assigned)

    # ---- offsets out of range -------------------------------------------------------

    def _consumer(self) -> object | None:
        return getattr(self._source, "consumer", None)

    def _log_bounds(self, keys: Collection[PartitionKey]) -> dict[PartitionKey, tuple[int, int]]:
        """(log start, high watermark) per partition, where the broker told us both."""
        consumer = self._consumer()
        if consumer is None or not keys:
            return {}
        partitions = [TopicPartition(t, p) for t, p in keys]
        try:
            starts = consumer.beginning_offsets(partitions)  # type: ignore[attr-defined]
        except (KafkaError, AssertionError) as exc:
            log.info("kafka: cannot read log start offsets: %s", exc)
            return {}
        bounds: dict[PartitionKey, tuple[int, int]] = {}
        for tp in partitions:
            highwater = consumer.highwater(tp)  # type: ignore[attr-defined]
            start = starts.get(tp)
            if highwater is not None and start is not None:
                bounds[(tp.topic, tp.partition)] = (int(start), int(highwater))
        return bounds

    def check_offset_range(self, keys: Collection[PartitionKey]) -> list[PartitionKey]:
        """Partitions whose stored offset lies outside the log; handled, returned.

        Only partitions for which a fetch told us the high watermark are judged
        (a ListOffsets answer alone can be too small on some brokers).
        """
        with self._lock:
            stored = {k: self._stored[k] for k in keys if k in self._stored}
        if not stored or self.pending_writes():
            return []
        found: list[PartitionKey] = []
        for key, (start, end) in self._log_bounds(stored).items():
            offset = stored[key]
            if offset > end:
                why = f"stored offset {offset} is beyond the log end {end}"
            elif offset < start:
                why = f"stored offset {offset} is before the log start {start} (records lost)"
            else:
                self._out_of_range.discard(key)
                continue
            found.append(key)
            self._offset_out_of_range(key, why, restart_at=start)
        return found

    def _check_positions(self, batches: Mapping[PartitionKey, Sequence[RawRecord]]) -> None:
        """Records below the stored offset: the broker reset the position itself."""
        lowest: dict[PartitionKey, int] = {}
        for key, part in batches.items():  # each in offset order: the first is the lowest
            offset = part[0].position.offset if part else None
            if offset is not None:
                lowest[key] = offset
        with self._lock:
            reset = {
                k: (o, self._stored[k]) for k, o in lowest.items() if o < self._stored.get(k, -1)
            }
        for key, (first, offset) in reset.items():
            self._offset_out_of_range(
                key,
                f"records arrive from offset {first}, below the stored offset {offset} "
                "(the broker reset the position: log lost or topic recreated)",
                restart_at=first,
                seek=False,
            )

    def _offset_out_of_range(
        self, key: PartitionKey, why: str, *, restart_at: int, seek: bool = True
    ) -> None:
        topic, partition = key
        message = f"kafka {topic}[{partition}] (group {self.group}): {why}"
        first = key not in self._out_of_range
        self._out_of_range.add(key)
        if first:
            self.offset_problems += 1
            log.error("%s; on_offset_out_of_range = %s", message, self.on_offset_out_of_range)
            try:
                raise_intake_incident(
                    self.store, message, topic=topic, action=self.on_offset_out_of_range
                )
            except StoreError as exc:
                log.error("kafka: could not record the intake incident: %s", exc)
        with self._lock:
            self._last_error = message[:500]
            self._last_error_at = utcnow()
        if self.on_offset_out_of_range == "stop":
            self.halted = message
            with self._lock:
                self._state = "stopped"
            self._stop.set()
            return
        self.store.events.reset_offset(
            self.group, topic, partition, restart_at, actor="kafka", reason=why
        )
        with self._lock:
            self._stored[key] = restart_at
        consumer = self._consumer()
        if seek and consumer is not None:  # else the broker already moved the position
            try:
                consumer.seek(TopicPartition(topic, partition), restart_at)  # type: ignore[attr-defined]
            except (KafkaError, AssertionError, ValueError) as exc:
                log.warning("kafka: cannot seek %s[%d]: %s", topic, partition, exc)
        self._out_of_range.discard(key)

    def run(self, stop: threading.Event | None = None, *, until_caught_up: bool = False) -> None:
        """Consume until ``stop`` is set (or, with ``until_caught_up``, no lag is left)."""
        stop = stop or threading.Event()
        delay = self.backoff_initial_s
        with collector_spared():
            self._run(stop, delay, until_caught_up)

    def _run(self, stop: threading.Event, delay: float, until_caught_up: bool) -> None:
        try:
            while not stop.is_set() and not self._stop.is_set():
                try:
                    polled = self.run_once()
                    delay = self.backoff_initial_s
                except (KafkaSourceError, StoreError) as exc:
                    self._failed(
                        f"{'kafka' if isinstance(exc, KafkaSourceError) else 'database'}: {exc}"
                    )
                    if isinstance(exc, KafkaSourceError):
                        self._close_source()
                    if stop.wait(delay):
                        break
                    delay = min(delay * 2, self.backoff_max_s)
                    continue
                if until_caught_up and not polled and self.caught_up():
                    break
        finally:
            self.close()

    def caught_up(self) -> bool:
        """Every assigned partition stored up to the log end, nothing in flight."""
        if self.pending_writes():
            return False
        self.refresh_end_offsets()
        with self._lock:
            if not self._assigned:
                return False
            # equal, not >=: a stored offset beyond the end is out of range (or the end
            # is not known yet), never "caught up"
            return all(
                self._stored.get(key, 0) == self._ends.get(key, 1 << 62) for key in self._assigned
            )

    def _close_source(self, *, forget_assignment: bool = True) -> None:
        if self._source is not None:
            source, self._source = self._source, None
            source.close()
        if forget_assignment:  # a new source re-reads the stored offsets on assignment
            with self._lock:
                self._assigned.clear()

    def close(self, wait_s: float = 30.0) -> None:
        """Finish writes in flight (bounded), then leave the group."""
        pending = [f for lane in self._lanes for f in lane.pending if not f.done()]
        if pending:
            wait_futures(pending, timeout=wait_s)
        self._stop.set()
        self.refresh_end_offsets()  # final lag figures for health()
        self._close_source(forget_assignment=False)
        for lane in self._lanes:
            lane.executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            self._state = "stopped"

    # ---- figures ---------------------------------------------------------------------

    @property
    def first_record_at(self) -> float | None:
        """``time.monotonic()`` when the first record arrived (for the benchmark)."""
        return self._first_record_at

    def health(self) -> KafkaHealth:
        with self._lock:
            partitions = tuple(
                PartitionHealth(
                    topic=t,
                    partition=p,
                    stored=self._stored.get((t, p)),
                    end=self._ends.get((t, p)),
                    lag=None
                    if (t, p) not in self._ends
                    else max(self._ends[(t, p)] - self._stored.get((t, p), 0), 0),
                )
                for t, p in sorted(self._assigned)
            )
            return KafkaHealth(
                group=self.group,
                state=self._state,
                partitions=partitions,
                records_written=self._records_written,
                counts=self._counts,
                consecutive_failures=self._failures,
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                last_write_at=self._last_write_at,
            )


def raise_intake_incident(store: Store, message: str, *, topic: str, action: str) -> int:
    """Open (or add to) one ``intake`` incident per registered model; returns how many."""
    now = utcnow()
    models = store.registry.models()
    for model in models:
        store.incidents.raise_(
            IncidentSignal(
                model_id=model.id,
                signal_kind=SignalKind.INTAKE,
                signal=f"kafka-offsets:{topic}"[:128],
                stratum_kind="overall",
                stratum_value="all",
                severity=Severity.HIGH,
                title=f"Kafka offsets out of range on {topic}"[:512],
                summary=(
                    f"{message}. on_offset_out_of_range = {action!r}: "
                    + (
                        "the consumer re-reads from the log start (idempotent); check what the "
                        "broker lost and re-send it"
                        if action == "earliest"
                        else "the consumer stopped; fix the broker or the stored offsets, "
                        "then restart it"
                    )
                ),
                evidence_at=now,
                vigilance_class=VigilanceClass.ASSESSMENT_PENDING,
                mdr_deadline_at=None,
                fda_deadline_at=None,
            ),
            actor="kafka",
        )
    if not models:
        log.error("kafka: no registered model to attach the intake incident to: %s", message)
    return len(models)


# ---- dead-letter replay -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What replaying one dead letter did."""

    id: int
    replayed: bool
    detail: str
    counts: IngestCounts | None = None


def _replay_event(entry: DeadLetter, ingestor: Ingestor) -> Event:
    """The dead letter parsed again, under the same limits as first time (config bounds,
    registered findings): a replay must not accept what intake refuses."""
    bounds, known = ingestor.bounds, ingestor.known_findings
    if entry.payload is None:
        raise InvalidRecord(
            "payload was not JSON, so only its SHA-256 was kept; re-send it from "
            f"its source ({entry.source} {entry.locator})"
        )
    if entry.source != "kafka" and '"kind"' in entry.payload:
        return parse_jsonl_line(entry.payload, bounds=bounds, known_findings=known)
    if entry.kind is None:
        raise InvalidRecord("the dead letter has no kind; cannot tell which topic it came from")
    return parse_json(entry.payload, entry.kind, bounds=bounds, known_findings=known)


def replay(
    store: Store, ingestor: Ingestor, entries: Sequence[DeadLetter], *, actor: str
) -> list[ReplayOutcome]:
    """Re-parse each dead letter's sanitised payload through the normal ingest path.

    A dead letter is marked replayed (in the same transaction as its rows) only
    if it is now valid; otherwise its outcome says why it still fails.
    """
    ingestor.refresh_models()
    outcomes: list[ReplayOutcome] = []
    for entry in entries:
        if entry.replayed_at is not None:
            outcomes.append(ReplayOutcome(entry.id, False, "already replayed"))
            continue
        batch = IngestBatch()
        try:
            ingestor.add(_replay_event(entry, ingestor), batch)
        except InvalidRecord as exc:
            outcomes.append(ReplayOutcome(entry.id, False, f"still invalid: {exc.reason}"))
            continue
        counts = store.events.replay_dead_letter(entry.id, batch, actor=actor)
        written = (
            f"{counts.predictions_new} prediction row(s) new, {counts.predictions_duplicate} "
            f"already stored, {counts.metadata} header(s), {counts.diagnoses_new} diagnosis "
            f"row(s) new, {counts.diagnoses_duplicate} already stored"
        )
        outcomes.append(ReplayOutcome(entry.id, True, f"replayed: {written}", counts))
    return outcomes


__all__ = [
    "KafkaHealth",
    "KafkaIngestService",
    "PartitionHealth",
    "ReplayOutcome",
    "raise_intake_incident",
    "replay",
    "topic_kinds",
]
