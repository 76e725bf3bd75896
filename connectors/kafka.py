"""Kafka topics -> :class:`~surveillance.intake.ingest.RawRecord`: one consumer-group member.

:class:`KafkaSource` is a transport-style source (``poll()`` / ``close()``, a
context manager) over a kafka-python ``KafkaConsumer`` subscribed to the three
topics of DESIGN.md. Several daemons with the same ``group_id`` split the
partitions between them.

Offsets live in the database, not in Kafka: auto-commit is off and nothing is
ever committed to the broker. Whenever partitions are assigned (start and every
rebalance) the rebalance listener asks ``offset_lookup`` for the stored next
offsets and seeks to them; a partition with no stored offset starts at the
beginning of the log. So a broker that lost (or never had) the group's
committed offsets cannot make the consumer skip or repeat records beyond what
the idempotent writes absorb.

If the lookup fails during a rebalance (the database is down), the newly
assigned partitions are paused, so nothing is fetched from an unknown
position, and the next :meth:`KafkaSource.poll` raises :class:`KafkaSourceError`;
the caller closes the source and opens a new one after a backoff.

CRC checks: kafka-python verifies record-batch CRC32C in pure Python unless the
optional ``crc32c`` package is installed, which caps consumption at about 40k
records/s on one core. ``check_crcs`` is therefore off by default, as in
librdkafka (``check.crcs=false``); TCP checksums and the broker's own produce-time
validation remain. Turn it on where the ``crc32c`` package is installed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from surveillance.core.events import RawRecord, SourcePosition

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]
OffsetLookup = Callable[[Collection[PartitionKey]], Mapping[PartitionKey, int]]
RevokeHook = Callable[[set[PartitionKey]], None]


class KafkaSourceError(Exception):
    """The Kafka source cannot go on as it is; close it and open a new one later."""


class _SeekToStoredOffsets(ConsumerRebalanceListener):
    """Seeks every assigned partition to the offset stored in the database.

    Runs on kafka-python's IO thread, before fetching starts for the new
    assignment; the lookup is one small query, well inside the session timeout.
    """

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in revoked}
        if keys and self.source.on_revoke is not None:
            self.source.on_revoke(keys)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.source.seek_to_stored(list(assigned))


class KafkaSource:
    """Polls the configured topics as a member of ``group_id``.

    ``topics`` maps topic name -> event kind (``prediction``,
    ``dicom-metadata``, ``diagnosis``). ``offset_lookup`` returns the stored
    next offset per (topic, partition) (missing = start at the beginning);
    ``on_revoke`` is called with the partitions being taken away, before
    another member may start on them: the place to finish writes in flight.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Mapping[str, str],
        offset_lookup: OffsetLookup,
        *,
        on_revoke: RevokeHook | None = None,
        max_records: int = 5000,
        poll_timeout_ms: int = 500,
        session_timeout_ms: int = 10000,
        heartbeat_interval_ms: int = 3000,
        check_crcs: bool = False,
        client_id: str = "surveillance",
        lookup_attempts: int = 3,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not topics:
            raise ValueError("'topics' must name at least one topic")
        if max_records < 1:
            raise ValueError(f"'max_records' must be >= 1, got {max_records}")
        self.topics = dict(topics)
        self.group_id = group_id
        self.offset_lookup = offset_lookup
        self.on_revoke = on_revoke
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.lookup_attempts = lookup_attempts
        self._broken: str | None = None
        options: dict[str, Any] = {
            "bootstrap_servers": bootstrap.split(","),
            "group_id": group_id,
            "client_id": client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "check_crcs": check_crcs,
            "max_poll_records": max_records,
            "fetch_max_bytes": 32 << 20,
            "max_partition_fetch_bytes": 4 << 20,
            "reconnect_backoff_ms": 100,
            "reconnect_backoff_max_ms": 10000,
        }
        options.update(consumer_options or {})
        try:
            self.consumer = KafkaConsumer(**options)
            self.consumer.subscribe(topics=sorted(self.topics), listener=_SeekToStoredOffsets(self))
        except KafkaError as exc:
            raise KafkaSourceError(f"cannot connect to Kafka at {bootstrap}: {exc}") from exc

    # ---- rebalance ---------------------------------------------------------------

    def seek_to_stored(self, assigned: list[TopicPartition]) -> None:
        """Position ``assigned`` at their stored offsets (called by the listener)."""
        if not assigned:
            return
        keys = [(tp.topic, tp.partition) for tp in assigned]
        stored: Mapping[PartitionKey, int] | None = None
        error: Exception | None = None
        for attempt in range(self.lookup_attempts):
            try:
                stored = self.offset_lookup(keys)
                break
            except Exception as exc:
                error = exc
                time.sleep(0.2 * (attempt + 1))
        if stored is None:
            self.consumer.pause(*assigned)
            self._broken = f"cannot read stored offsets for {sorted(keys)}: {error}"
            log.warning("kafka: %s; partitions paused", self._broken)
            return
        fresh = [tp for tp in assigned if (tp.topic, tp.partition) not in stored]
        for tp in assigned:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                self.consumer.seek(tp, offset)
        if fresh:
            self.consumer.seek_to_beginning(*fresh)
        log.info(
            "kafka: assigned %s; stored offsets %s",
            sorted(keys),
            {f"{t}[{p}]": o for (t, p), o in sorted(stored.items()) if (t, p) in set(keys)},
        )

    # ---- transport ---------------------------------------------------------------

    def poll(self, timeout_ms: int | None = None) -> list[RawRecord]:
        """The next records (possibly none), in offset order within each partition."""
        return [raw for part in self.poll_partitions(timeout_ms).values() for raw in part]

    def poll_partitions(self, timeout_ms: int | None = None) -> dict[PartitionKey, list[RawRecord]]:
        """The next records by (topic, partition), each list in offset order (as the
        broker returns them): callers find a partition's first and last offset at
        its ends, without a pass over every record."""
        if self._broken is not None:
            raise KafkaSourceError(self._broken)
        try:
            fetched = self.consumer.poll(
                timeout_ms=self.poll_timeout_ms if timeout_ms is None else timeout_ms,
                max_records=self.max_records,
            )
        except KafkaError as exc:
            raise KafkaSourceError(f"Kafka poll failed: {exc}") from exc
        if self._broken is not None:
            raise KafkaSourceError(self._broken)
        batches: dict[PartitionKey, list[RawRecord]] = {}
        for tp, messages in fetched.items():
            if not messages:
                continue
            kind = self.topics[tp.topic]
            topic, partition = tp.topic, tp.partition
            batches[(topic, partition)] = [
                RawRecord(
                    b"" if m.value is None else m.value,
                    SourcePosition("kafka", topic, partition, m.offset),
                    kind,
                )
                for m in messages
            ]
        return batches

    def assignment(self) -> set[PartitionKey]:
        return {(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def pause(self) -> None:
        """Stop fetching (membership and heartbeats go on) until :meth:`resume`."""
        self.consumer.pause(*self.consumer.assignment())

    def resume(self) -> None:
        self.consumer.resume(*self.consumer.paused())

    def end_offsets(self, keys: Collection[PartitionKey]) -> dict[PartitionKey, int]:
        """Log-end offsets (the next offset a producer will write) per partition.

        The larger of the ListOffsets answer and the high watermark of the last
        fetch response: tansu 0.6 answers ListOffsets with the last record
        *batch*'s base offset + 1, which is too small whenever that batch holds
        more than one record.
        """
        if not keys:
            return {}
        partitions = [TopicPartition(t, p) for t, p in keys]
        try:
            ends = self.consumer.end_offsets(partitions)
        except KafkaError as exc:
            raise KafkaSourceError(f"cannot read end offsets: {exc}") from exc
        result = {(tp.topic, tp.partition): int(o) for tp, o in ends.items()}
        assigned = self.consumer.assignment()
        for tp in partitions:
            highwater = self.consumer.highwater(tp) if tp in assigned else None
            if highwater is not None:
                key = (tp.topic, tp.partition)
                result[key] = max(result.get(key, 0), int(highwater))
        return result

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        except KafkaError as exc:  # closing a consumer whose broker is gone
            log.debug("kafka: close: %s", exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def end_offsets(
    bootstrap: str, topics: Iterable[str], *, timeout_ms: int = 10000
) -> dict[PartitionKey, int]:
    """Log-end offsets of every partition of ``topics`` (no group membership, no commit)."""
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap.split(","),
            enable_auto_commit=False,
            request_timeout_ms=max(timeout_ms, 1000),
        )
    except KafkaError as exc:
        raise KafkaSourceError(f"cannot connect to Kafka at {bootstrap}: {exc}") from exc
    try:
        partitions = []
        for topic in topics:
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                partitions.append(TopicPartition(topic, p))
        if not partitions:
            return {}
        ends = {
            tp: int(o) for tp, o in consumer.end_offsets(partitions, timeout_ms=timeout_ms).items()
        }
        # Fetch the last batch of each non-empty partition for its high watermark
        # (see KafkaSource.end_offsets on ListOffsets answers that are too small).
        nonempty = [tp for tp, end in ends.items() if end > 0]
        consumer.assign(nonempty)
        for tp in nonempty:
            consumer.seek(tp, ends[tp] - 1)
        deadline = time.monotonic() + timeout_ms / 1000
        while nonempty and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
            if all(consumer.highwater(tp) is not None for tp in nonempty):
                break
        for tp in nonempty:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = max(ends[tp], int(highwater))
        return {(tp.topic, tp.partition): o for tp, o in ends.items()}
    except KafkaError as exc:
        raise KafkaSourceError(f"cannot read end offsets from {bootstrap}: {exc}") from exc
    finally:
        consumer.close(autocommit=False)


__all__ = ["KafkaSource", "KafkaSourceError", "OffsetLookup", "PartitionKey", "end_offsets"]
