"""The intake's writes and rejects: event batches, consumer offsets, dead letters, spool references.

Offsets are committed in the same transaction as the rows they cover, so a
crash never loses or duplicates an accepted record. Dead letters keep the reason
and the source position; a replay writes the now-valid batch and marks the dead
letter replayed atomically."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime

from sqlalchemy import delete, select, update

from surveillance.core.errors import NotFoundError
from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.domain import (
    DeadLetter,
    IngestBatch,
    IngestCounts,
    LabelWithdrawalRecord,
)
from surveillance.store.ingest_writer import read_offsets, write_batch
from surveillance.store.models import (
    ConsumerOffsetRow,
    DeadLetterRow,
    DiagnosisRow,
    ImageSpoolRow,
    StudyRow,
)
from surveillance.store.types import utcnow

_CHUNK = 500


def _entry(r: DeadLetterRow) -> DeadLetter:
    return DeadLetter(
        id=r.id,
        source=r.source,
        locator=r.locator,
        partition=None if r.partition < 0 else r.partition,
        offset=None if r.offset < 0 else r.offset,
        kind=r.kind,
        reason=r.reason,
        payload=r.payload,
        received_at=r.received_at,
        replayed_at=r.replayed_at,
    )


class EventsRepository(Repository):
    """What intake wrote: event batches, offsets, dead letters."""

    def write_batch(self, batch: IngestBatch) -> IngestCounts:
        with self._sessions.scope() as s:
            return write_batch(s, batch)

    def offsets(
        self, consumer_group: str, keys: Collection[tuple[str, int]] | None = None
    ) -> dict[tuple[str, int], int]:
        """Next offset per (topic, partition) stored for ``consumer_group`` (only ``keys``)."""
        with self._sessions.scope() as s:
            offsets = read_offsets(s, consumer_group)
        if keys is None:
            return offsets
        wanted = set(keys)
        return {k: v for k, v in offsets.items() if k in wanted}

    def consumer_groups(self) -> list[str]:
        with self._sessions.scope() as s:
            return sorted(s.scalars(select(ConsumerOffsetRow.consumer_group).distinct()))

    def reset_offset(
        self,
        consumer_group: str,
        topic: str,
        partition: int,
        next_offset: int,
        *,
        actor: str,
        reason: str,
    ) -> None:
        """Set the stored next offset of one partition (it may go back); audited.

        Used when the stored offset lies outside the broker's log (the log was
        lost or the topic recreated): ``[kafka] on_offset_out_of_range = "earliest"``.
        """
        with self._sessions.scope() as s:
            row = s.get(ConsumerOffsetRow, (consumer_group, topic, partition))
            before = None if row is None else row.next_offset
            if row is None:
                s.add(
                    ConsumerOffsetRow(
                        consumer_group=consumer_group,
                        topic=topic,
                        partition=partition,
                        next_offset=next_offset,
                        updated_at=utcnow(),
                    )
                )
            else:
                row.next_offset = next_offset
                row.updated_at = utcnow()
            audit.append(
                s,
                actor=actor,
                action="kafka.offset_reset",
                entity="consumer_offset",
                entity_id=f"{consumer_group}/{topic}[{partition}]",
                detail={"before": before, "after": next_offset, "reason": reason[:500]},
            )

    def forget_offsets(self, consumer_group: str) -> int:
        """Delete every stored offset of ``consumer_group`` (bench clean-up); returns rows gone."""
        with self._sessions.scope() as s:
            result = s.execute(
                delete(ConsumerOffsetRow).where(ConsumerOffsetRow.consumer_group == consumer_group)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def dead_letters(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        stmt = select(DeadLetterRow).order_by(DeadLetterRow.id).limit(limit)
        if not include_replayed:
            stmt = stmt.where(DeadLetterRow.replayed_at.is_(None))
        with self._sessions.scope() as s:
            return [_entry(r) for r in s.scalars(stmt)]

    def dead_letters_by_id(self, ids: Sequence[int]) -> list[DeadLetter]:
        """The dead letters ``ids`` in that order; raises NotFoundError naming missing ones."""
        with self._sessions.scope() as s:
            found = s.scalars(select(DeadLetterRow).where(DeadLetterRow.id.in_(ids)))
            rows = {r.id: _entry(r) for r in found}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise NotFoundError(
                f"no dead letter with id {', '.join(map(str, missing))} "
                "(see 'surveillance deadletters list --all')"
            )
        return [rows[i] for i in ids]

    def pending_dead_letters(self, limit: int = 100_000) -> list[DeadLetter]:
        """Dead letters not replayed yet, oldest first."""
        with self._sessions.scope() as s:
            return [
                _entry(r)
                for r in s.scalars(
                    select(DeadLetterRow)
                    .where(DeadLetterRow.replayed_at.is_(None))
                    .order_by(DeadLetterRow.id)
                    .limit(limit)
                )
            ]

    def replay_dead_letter(
        self, dead_letter_id: int, batch: IngestBatch, *, actor: str
    ) -> IngestCounts:
        """Write ``batch`` (the dead letter, now valid) and mark it replayed, atomically.

        The audit log records who replayed which dead letter and what it wrote.
        """
        with self._sessions.scope() as s:
            counts = write_batch(s, batch)
            now = utcnow()
            s.execute(
                update(DeadLetterRow)
                .where(DeadLetterRow.id == dead_letter_id)
                .values(replayed_at=now)
            )
            audit.append(
                s,
                actor=actor,
                action="deadletter.replay",
                entity="dead_letter",
                entity_id=dead_letter_id,
                detail={
                    "predictions_new": counts.predictions_new,
                    "predictions_duplicate": counts.predictions_duplicate,
                    "metadata": counts.metadata,
                    "diagnoses_new": counts.diagnoses_new,
                    "diagnoses_duplicate": counts.diagnoses_duplicate,
                },
            )
        return counts

    def purge_dead_letters(self, *, before: datetime, actor: str) -> int:
        with self._sessions.scope() as s:
            result = s.execute(
                delete(DeadLetterRow)
                .where(DeadLetterRow.received_at < before)
                .execution_options(synchronize_session=False)
            )
            count = int(getattr(result, "rowcount", 0) or 0)
            if count:
                audit.append(
                    s,
                    actor=actor,
                    action="retention.dead_letters",
                    entity="dead_letter",
                    entity_id="*",
                    detail={"deleted": count, "before": before.isoformat()},
                )
            return count

    def referenced_spool_files(self, names: Iterable[str]) -> set[str]:
        """The subset of ``names`` that some ``image_spool`` row points at."""
        wanted = sorted(set(names))
        found: set[str] = set()
        with self._sessions.scope() as s:
            for start in range(0, len(wanted), _CHUNK):
                part = wanted[start : start + _CHUNK]
                found.update(
                    s.scalars(
                        select(ImageSpoolRow.file_name).where(ImageSpoolRow.file_name.in_(part))
                    )
                )
        return found

    def pending_spool_files(self, limit: int = 20) -> list[str]:
        """Spool file names of up to ``limit`` instances not yet embedded (nor failed)."""
        with self._sessions.scope() as s:
            return list(
                s.scalars(
                    select(ImageSpoolRow.file_name)
                    .where(ImageSpoolRow.embedded_at.is_(None), ImageSpoolRow.error.is_(None))
                    .order_by(ImageSpoolRow.id)
                    .limit(limit)
                )
            )

    def withdraw_labels(self, items: Sequence[LabelWithdrawalRecord], *, actor: str) -> int:
        """Mark the valid report-sourced diagnoses of each (study, finding) withdrawn.

        An entered-in-error DiagnosticReport says an earlier version was wrong; its
        labels stay stored (evidence) with ``withdrawn_at`` set, and no check reads
        them any more. Returns how many diagnosis rows were withdrawn; audited.
        """
        if not items:
            return 0
        now = utcnow()
        total = 0
        with self._sessions.scope() as s:
            for item in items:
                study_ids = select(StudyRow.id).where(
                    StudyRow.uid_pseudonym == item.study_uid_pseudonym
                )
                result = s.execute(
                    update(DiagnosisRow)
                    .where(
                        DiagnosisRow.study_id.in_(study_ids),
                        DiagnosisRow.finding == item.finding,
                        DiagnosisRow.source == "report",
                        DiagnosisRow.withdrawn_at.is_(None),
                    )
                    .values(withdrawn_at=now, withdrawn_by=item.report_hash)
                    .execution_options(synchronize_session=False)
                )
                count = int(getattr(result, "rowcount", 0) or 0)
                total += count
                audit.append(
                    s,
                    actor=actor,
                    action="diagnosis.withdrawn",
                    entity="diagnosis",
                    entity_id=item.report_hash,
                    detail={"finding": item.finding, "withdrawn": count},
                )
        return total

    def failed_spool_files(self, *, before: datetime) -> list[str]:
        """Spool file names of instances that could not be embedded, received before ``before``."""
        with self._sessions.scope() as s:
            return list(
                s.scalars(
                    select(ImageSpoolRow.file_name).where(
                        ImageSpoolRow.error.is_not(None), ImageSpoolRow.received_at < before
                    )
                )
            )
