"""The embedding area: spool claims, embedding writes and reads.

Claiming (several extractors at once)
    A spool row is *pending* while ``embedded_at`` and ``claimed_at`` are NULL
    and ``error`` is NULL or the retry marker. :meth:`EmbeddingsRepository.claim_spool` takes up to
    ``limit`` pending rows in one statement: on PostgreSQL
    ``UPDATE ... WHERE id IN (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT n)
    RETURNING ...``, so concurrent claimers skip each other's rows instead of
    waiting or taking them twice; on SQLite the same single UPDATE (SQLite runs
    one writer at a time, so the statement is atomic).

Interrupted claims
    A claim older than ``stale_before`` belongs to a worker that died. Its row
    is released once, with ``error`` set to the retry marker
    (:data:`RETRY_MARKER`); if it goes stale a second time it is *abandoned*
    (``error`` says so) and never claimed again, so a file that kills its
    decoder cannot loop forever. :meth:`EmbeddingsRepository.release_claims` applies the same rule
    at once when the decode workers of a batch fail as a whole.

Finishing
    :meth:`EmbeddingsRepository.finish_claims` writes the embeddings (``ON CONFLICT DO NOTHING`` on
    (study, extractor, version): the first instance of a study wins; on PostgreSQL,
    where ``embedding`` is partitioned by month, on its key table ``embedding_key``,
    claimed in the same transaction), marks the
    rows embedded or failed, and audits the batch, in one transaction. The
    caller deletes the spool files after it returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter

import numpy as np
from sqlalchemy import ColumnElement, CursorResult, and_, func, or_, select, update
from sqlalchemy.orm import Session

from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.domain import NO_METADATA
from surveillance.store.ingest_writer import _insert
from surveillance.store.models import (
    DeviceRow,
    EmbeddingKeyRow,
    EmbeddingRow,
    ImageSpoolRow,
    PredictionRow,
    SiteRow,
    StudyRow,
)
from surveillance.store.types import utcnow

RETRY_MARKER = "interrupted: retrying once after a claim expired"
ABANDONED = "abandoned: the worker processing this file stopped twice"

_INSERT_CHUNK = 500


@dataclass(frozen=True, slots=True)
class SpoolClaim:
    """One claimed spool row."""

    id: int
    study_id: int
    file_name: str
    transfer_syntax: str | None


@dataclass(frozen=True, slots=True)
class EmbeddingWrite:
    study_id: int
    vector: np.ndarray  # 1-D; stored as float32 little-endian


@dataclass(frozen=True, slots=True)
class FinishCounts:
    embeddings_new: int
    embedded: int
    failed: int


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    pending: int
    claimed: int
    embedded: int
    failed: int
    retrying: int


@dataclass(frozen=True, slots=True)
class EmbeddingSet:
    """Embeddings of one extractor for a model's studies, with when and where.

    ``at`` is the study's first prediction time for the model (the same clock
    as the other drift signals); ``site``/``scanner`` are the labels used by the
    case table, so strata line up.
    """

    extractor: str
    version: str
    vectors: np.ndarray  # (n, dim) float32
    at: np.ndarray  # datetime64[us], naive UTC
    site: np.ndarray  # object
    scanner: np.ndarray  # object
    study_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def stratum(self, kind: str) -> np.ndarray:
        if kind == "overall":
            return np.full(len(self), "all", dtype=object)
        if kind == "site":
            return self.site
        if kind == "scanner":
            return self.scanner
        raise ValueError(f"embeddings have no stratum kind {kind!r}")


def _pending() -> ColumnElement[bool]:
    return and_(
        ImageSpoolRow.embedded_at.is_(None),
        ImageSpoolRow.claimed_at.is_(None),
        or_(ImageSpoolRow.error.is_(None), ImageSpoolRow.error == RETRY_MARKER),
    )


def _expire_stale(session: Session, stale_before: datetime | None) -> None:
    if stale_before is None:
        return
    stale = and_(
        ImageSpoolRow.embedded_at.is_(None),
        ImageSpoolRow.claimed_at.is_not(None),
        ImageSpoolRow.claimed_at < stale_before,
    )
    for marker, values in (
        (ImageSpoolRow.error == RETRY_MARKER, {"error": ABANDONED}),
        (
            ImageSpoolRow.error.is_(None),
            {"error": RETRY_MARKER, "claimed_by": None, "claimed_at": None},
        ),
    ):
        # SKIP LOCKED here too: two claimers expiring the same rows never wait
        # for (or deadlock on) each other.
        chosen = select(ImageSpoolRow.id).where(stale, marker).with_for_update(skip_locked=True)
        session.execute(
            update(ImageSpoolRow)
            .where(ImageSpoolRow.id.in_(chosen.scalar_subquery()))
            .values(**values)
        )


def _insert_embeddings(
    session: Session, extractor: str, version: str, writes: Sequence[EmbeddingWrite]
) -> int:
    if not writes:
        return 0
    now = utcnow()
    rows = []
    for w in writes:
        vector = np.ascontiguousarray(w.vector, dtype="<f4").ravel()
        rows.append(
            {
                "study_id": w.study_id,
                "extractor": extractor,
                "extractor_version": version,
                "dim": int(vector.shape[0]),
                "vector": vector.tobytes(),
                "created_at": now,
            }
        )
    new = 0
    partitioned = session.get_bind().dialect.name == "postgresql"
    if partitioned:  # embedding is partitioned by month (0010): its key is embedding_key
        rows = sorted(
            {r["study_id"]: r for r in reversed(rows)}.values(), key=itemgetter("study_id")
        )
    for start in range(0, len(rows), _INSERT_CHUNK):
        chunk = rows[start : start + _INSERT_CHUNK]
        if partitioned:
            claimed = set(
                session.scalars(
                    _insert(session, EmbeddingKeyRow)
                    .values([{k: r[k] for k in _KEY_COLUMNS} for r in chunk])
                    .on_conflict_do_nothing()
                    .returning(EmbeddingKeyRow.study_id)
                )
            )
            chunk = [r for r in chunk if r["study_id"] in claimed]
            if not chunk:
                continue
        stmt = _insert(session, EmbeddingRow).values(chunk).on_conflict_do_nothing()
        new += len(session.execute(stmt.returning(EmbeddingRow.id)).all())
    return new


_KEY_COLUMNS = ("study_id", "extractor", "extractor_version", "created_at")


class EmbeddingsRepository(Repository):
    """Spool claims and stored embeddings."""

    def claim_spool(
        self, worker: str, limit: int, *, stale_before: datetime | None = None
    ) -> list[SpoolClaim]:
        """Claim up to ``limit`` pending spool rows for ``worker`` (oldest first)."""
        if limit < 1:
            return []
        now = utcnow()
        with self._sessions.scope() as s:
            _expire_stale(s, stale_before)
            chosen = (
                select(ImageSpoolRow.id)
                .where(_pending())
                .order_by(ImageSpoolRow.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            rows = s.execute(
                update(ImageSpoolRow)
                .where(ImageSpoolRow.id.in_(chosen.scalar_subquery()))
                .values(claimed_by=worker[:128], claimed_at=now)
                .returning(
                    ImageSpoolRow.id,
                    ImageSpoolRow.study_id,
                    ImageSpoolRow.file_name,
                    ImageSpoolRow.transfer_syntax,
                )
            ).all()
        return sorted((SpoolClaim(*row) for row in rows), key=lambda c: c.id)

    def release_claims(self, ids: Iterable[int], worker: str) -> None:
        """Give back rows whose batch failed as a whole: retried once, then abandoned."""
        ids = list(ids)
        if not ids:
            return
        mine = and_(
            ImageSpoolRow.id.in_(ids),
            ImageSpoolRow.claimed_by == worker[:128],
            ImageSpoolRow.embedded_at.is_(None),
        )
        with self._sessions.scope() as s:
            s.execute(
                update(ImageSpoolRow)
                .where(mine, ImageSpoolRow.error == RETRY_MARKER)
                .values(error=ABANDONED)
            )
            s.execute(
                update(ImageSpoolRow)
                .where(mine, ImageSpoolRow.error.is_(None))
                .values(error=RETRY_MARKER, claimed_by=None, claimed_at=None)
            )

    def embedded_studies(self, study_ids: Iterable[int], extractor: str, version: str) -> set[int]:
        """The subset of ``study_ids`` that already has an embedding of this extractor."""
        ids = sorted(set(study_ids))
        if not ids:
            return set()
        with self._sessions.scope() as s:
            return set(
                s.scalars(
                    select(EmbeddingRow.study_id).where(
                        EmbeddingRow.study_id.in_(ids),
                        EmbeddingRow.extractor == extractor,
                        EmbeddingRow.extractor_version == version,
                    )
                )
            )

    def write_embeddings(
        self, extractor: str, version: str, writes: Sequence[EmbeddingWrite], *, actor: str
    ) -> int:
        """Insert embeddings (existing (study, extractor, version) rows are kept); audited."""
        with self._sessions.scope() as s:
            new = _insert_embeddings(s, extractor, version, writes)
            if new:
                audit.append(
                    s,
                    actor=actor,
                    action="embedding.write",
                    entity="embedding",
                    entity_id=f"{extractor}@{version}",
                    detail={"new": new, "offered": len(writes)},
                )
            return new

    def finish_claims(
        self,
        worker: str,
        extractor: str,
        version: str,
        *,
        embeddings: Sequence[EmbeddingWrite],
        done: Sequence[int],
        failed: dict[int, str],
    ) -> FinishCounts:
        """One transaction: write ``embeddings``, mark ``done`` rows embedded, ``failed`` rows
        with their error. Only rows still claimed by ``worker`` are updated."""
        now = utcnow()
        mine = ImageSpoolRow.claimed_by == worker[:128]
        with self._sessions.scope() as s:
            new = _insert_embeddings(s, extractor, version, embeddings)
            embedded = 0
            if done:
                result = s.execute(
                    update(ImageSpoolRow)
                    .where(ImageSpoolRow.id.in_(list(done)), mine)
                    .values(embedded_at=now, error=None)
                )
                assert isinstance(result, CursorResult)
                embedded = result.rowcount
            for spool_id, error in failed.items():
                s.execute(
                    update(ImageSpoolRow)
                    .where(ImageSpoolRow.id == spool_id, mine)
                    .values(error=error[:1000])
                )
            audit.append(
                s,
                actor=worker[:128],
                action="embedding.batch",
                entity="embedding",
                entity_id=f"{extractor}@{version}",
                detail={"new": new, "embedded": embedded, "failed": len(failed)},
            )
        return FinishCounts(embeddings_new=new, embedded=int(embedded), failed=len(failed))

    def spool_status(self) -> SpoolStatus:
        """How many spool rows are pending, claimed, embedded, failed, waiting for a retry."""
        r = ImageSpoolRow
        with self._sessions.scope() as s:
            pending, claimed, embedded, failed, retrying = s.execute(
                select(
                    func.count().filter(_pending()),
                    func.count().filter(
                        r.embedded_at.is_(None), r.claimed_at.is_not(None), r.error.is_(None)
                    ),
                    func.count().filter(r.embedded_at.is_not(None)),
                    func.count().filter(
                        r.embedded_at.is_(None), r.error.is_not(None), r.error != RETRY_MARKER
                    ),
                    func.count().filter(r.error == RETRY_MARKER),
                ).select_from(r)
            ).one()
        return SpoolStatus(
            pending=int(pending),
            claimed=int(claimed),
            embedded=int(embedded),
            failed=int(failed),
            retrying=int(retrying),
        )

    def prediction_scores_without_embedding(
        self, model_id: int, extractor: str, version: str, *, limit: int = 10_000
    ) -> list[tuple[int, dict[str, float]]]:
        """Studies of ``model_id`` with predictions but no ``extractor@version`` embedding,
        with their latest score per finding (for BBSD)."""
        with self._sessions.scope() as s:
            have = select(EmbeddingRow.study_id).where(
                EmbeddingRow.extractor == extractor, EmbeddingRow.extractor_version == version
            )
            studies = list(
                s.scalars(
                    select(PredictionRow.study_id)
                    .where(PredictionRow.model_id == model_id, PredictionRow.study_id.not_in(have))
                    .group_by(PredictionRow.study_id)
                    .order_by(PredictionRow.study_id)
                    .limit(limit)
                )
            )
            if not studies:
                return []
            scores: dict[int, dict[str, float]] = {sid: {} for sid in studies}
            rows = s.execute(
                select(PredictionRow.study_id, PredictionRow.finding, PredictionRow.score)
                .where(PredictionRow.model_id == model_id, PredictionRow.study_id.in_(studies))
                .order_by(PredictionRow.predicted_at, PredictionRow.id)
            )
            for study_id, finding, score in rows:
                scores[study_id][finding] = float(score)  # the latest prediction wins
        return sorted(scores.items())

    def model_embeddings(
        self,
        model_id: int,
        start: datetime,
        end: datetime,
        *,
        versions: Mapping[str, str] | None = None,
    ) -> list[EmbeddingSet]:
        """Every extractor's embeddings of the studies ``model_id`` predicted in [start, end).

        Where an extractor has several versions, the one with the most vectors in
        the period is used (a new version starts empty, so comparing it with an old
        reference would be meaningless), unless ``versions`` names the one to use
        (the drift job passes the reference's, so that each window it loads alone
        is compared with vectors of the same version).
        """
        first = (
            select(
                PredictionRow.study_id.label("study_id"),
                func.min(PredictionRow.predicted_at).label("at"),
            )
            .where(PredictionRow.model_id == model_id)
            .group_by(PredictionRow.study_id)
            .subquery()
        )
        in_period = and_(first.c.at >= start, first.c.at < end)
        with self._sessions.scope() as s:
            counted = s.execute(
                select(EmbeddingRow.extractor, EmbeddingRow.extractor_version, func.count())
                .join(first, first.c.study_id == EmbeddingRow.study_id)
                .where(in_period)
                .group_by(EmbeddingRow.extractor, EmbeddingRow.extractor_version)
            ).all()
            best: dict[str, tuple[int, str]] = {}
            for extractor, version, count in counted:
                if (count, version) > best.get(extractor, (-1, "")):
                    best[extractor] = (int(count), version)
            sets = []
            chosen = {name: version for name, (_, version) in best.items()}
            if versions:
                chosen |= {name: v for name, v in versions.items() if name in chosen}
            for extractor, version in sorted(chosen.items()):
                rows = s.execute(
                    select(
                        EmbeddingRow.study_id,
                        EmbeddingRow.dim,
                        EmbeddingRow.vector,
                        first.c.at,
                        SiteRow.label,
                        DeviceRow.label,
                    )
                    .join(first, first.c.study_id == EmbeddingRow.study_id)
                    .join(StudyRow, StudyRow.id == EmbeddingRow.study_id)
                    .outerjoin(SiteRow, SiteRow.id == StudyRow.site_id)
                    .outerjoin(DeviceRow, DeviceRow.id == StudyRow.device_id)
                    .where(
                        in_period,
                        EmbeddingRow.extractor == extractor,
                        EmbeddingRow.extractor_version == version,
                    )
                    .order_by(first.c.at, EmbeddingRow.study_id)
                ).all()
                dims = {int(r[1]) for r in rows}
                if len(dims) != 1:
                    continue  # a mixed-dimension extractor cannot be tested as one
                dim = dims.pop()
                vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(-1, dim)
                sets.append(
                    EmbeddingSet(
                        extractor=extractor,
                        version=version,
                        vectors=vectors.astype(np.float32),
                        at=np.array(
                            [np.datetime64(r[3].replace(tzinfo=None), "us") for r in rows],
                            dtype="datetime64[us]",
                        ),
                        site=np.array([r[4] or NO_METADATA for r in rows], dtype=object),
                        scanner=np.array([r[5] or NO_METADATA for r in rows], dtype=object),
                        study_ids=np.array([r[0] for r in rows], dtype=np.int64),
                    )
                )
        return sets
