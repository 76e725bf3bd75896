"""The embedding job: spooled DICOM instances -> one embedding per study, spool emptied.

Each round claims up to ``claim_batch`` spool rows
(:func:`~surveillance.store.embedding_store.claim_spool`: ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so any number of these jobs can run side by side),
decodes and embeds them, then in one transaction writes the embeddings and
marks each row embedded or failed; the spool files of embedded rows are
deleted only after that commit.

* **One embedding per study.** The first instance (lowest spool id) of a study
  that decodes gives the study's vector; later instances of a study that
  already has one are marked embedded without decoding.
* **Bad files.** A file that does not decode gets ``error`` set and stays in the
  spool for inspection (``delete_failed=True`` removes it); it is never
  claimed again and the job goes on. If the decode workers die on a batch
  (a crash in a native decoder), the batch is redone one file per worker so
  only the culprit fails. A worker that dies mid-batch leaves claims that go
  stale after ``claim_timeout``: such rows are retried once, then abandoned.
* **BBSD.** :func:`run_bbsd` stores the deployed model's own scores as the
  ``bbsd:<model>`` embedding of every study it predicted.
* **Image quality.** The scheduled job also fingerprints every file it embeds
  (:mod:`surveillance.analysis.image_signals`: noise, sharpness, HU quantiles,
  matrix, field of view, from the pixels in physical units) and stores it as
  the study's ``image-quality`` embedding, before the spool file is deleted;
  the drift job tests it as ``image:<feature>`` signals.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

import numpy as np

from surveillance.analysis.embeddings.backbones import BBSDBackbone, create_backbone
from surveillance.analysis.embeddings.extractor import ExtractionError, Extractor, FileResult
from surveillance.analysis.image_signals import ImageQualityExtractor
from surveillance.core.config import Settings
from surveillance.core.errors import UsageError
from surveillance.store import ModelInfo, Store
from surveillance.store.embeddings import EmbeddingWrite, SpoolClaim
from surveillance.store.types import utcnow

log = logging.getLogger(__name__)

DEFAULT_CLAIM_BATCH = 256
DEFAULT_CLAIM_TIMEOUT = timedelta(minutes=30)
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class EmbedReport:
    """What one run did. ``embedded`` counts spool rows done (duplicates included)."""

    claimed: int = 0
    embedded: int = 0
    embeddings_new: int = 0
    failed: int = 0
    files_deleted: int = 0
    bbsd_new: int = 0

    def __add__(self, other: EmbedReport) -> EmbedReport:
        return EmbedReport(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(EmbedReport))
        )


def default_worker_id() -> str:
    """``host:pid:random``: unique per run, readable in ``claimed_by``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:128]


def spool_path(spool_dir: Path, file_name: str) -> Path:
    """``spool_dir / file_name`` for a generated name; refuses anything that could escape."""
    parts = PurePosixPath(file_name).parts
    if not parts or any(not _SAFE_PART.match(p) for p in parts):
        raise UsageError(f"spool file name {file_name!r} is not a generated spool name")
    return spool_dir.joinpath(*parts)


def _embed_claims(extractor: Extractor, paths: list[Path]) -> list[FileResult]:
    try:
        return extractor.embed_files(paths)
    except ExtractionError as exc:
        log.warning("decode workers failed on a batch (%s); retrying file by file", exc)
    results = []
    for index, path in enumerate(paths):
        try:
            (one,) = extractor.embed_files([path])
            results.append(FileResult(index, one.vector, one.error))
        except ExtractionError as exc:
            results.append(FileResult(index, None, str(exc)[:300]))
    return results


def _process(
    store: Store,
    extractor: Extractor,
    spool_dir: Path,
    worker: str,
    claims: list[SpoolClaim],
    delete_failed: bool,
    also: Sequence[ImageQualityExtractor] = (),
) -> EmbedReport:
    already = store.embeddings.embedded_studies(
        (c.study_id for c in claims), extractor.name, extractor.version
    )
    done = [c.id for c in claims if c.study_id in already]
    failed: dict[int, str] = {}
    todo: list[tuple[SpoolClaim, Path]] = []
    for claim in claims:
        if claim.study_id in already:
            continue
        try:
            todo.append((claim, spool_path(spool_dir, claim.file_name)))
        except UsageError as exc:
            failed[claim.id] = str(exc)
    results = _embed_claims(extractor, [path for _, path in todo])
    writes: dict[int, EmbeddingWrite] = {}
    for (claim, _), result in zip(todo, results, strict=True):
        if result.vector is None:
            failed[claim.id] = result.error or "unknown error"
            continue
        done.append(claim.id)
        writes.setdefault(claim.study_id, EmbeddingWrite(claim.study_id, result.vector))
    for extra in also:
        _secondary(store, extra, worker, [(c, p) for c, p in todo if c.id not in failed])
    counts = store.embeddings.finish_claims(
        worker,
        extractor.name,
        extractor.version,
        embeddings=list(writes.values()),
        done=done,
        failed=failed,
    )
    paths = {c.id: c.file_name for c in claims}
    deleted = 0
    for spool_id in done + (list(failed) if delete_failed else []):
        try:
            spool_path(spool_dir, paths[spool_id]).unlink(missing_ok=True)
            deleted += 1
        except (OSError, UsageError) as exc:
            log.warning("could not delete spool file of row %s: %s", spool_id, exc)
    return EmbedReport(
        claimed=len(claims),
        embedded=counts.embedded,
        embeddings_new=counts.embeddings_new,
        failed=counts.failed,
        files_deleted=deleted,
    )


def _secondary(
    store: Store,
    extra: ImageQualityExtractor,
    worker: str,
    todo: list[tuple[SpoolClaim, Path]],
) -> int:
    """Run ``extra`` on the files just embedded (one vector per study); returns new rows.

    A file ``extra`` cannot use is only logged: the main embedding decides the
    spool row's fate.
    """
    have = store.embeddings.embedded_studies(
        (c.study_id for c, _ in todo), extra.name, extra.version
    )
    pending = [(c, p) for c, p in todo if c.study_id not in have]
    writes: dict[int, EmbeddingWrite] = {}
    for (claim, _), result in zip(pending, extra.embed_files([p for _, p in pending]), strict=True):
        if result.vector is None:
            log.info("no %s vector for spool row %s: %s", extra.name, claim.id, result.error)
            continue
        writes.setdefault(claim.study_id, EmbeddingWrite(claim.study_id, result.vector))
    if not writes:
        return 0
    return store.embeddings.write_embeddings(
        extra.name, extra.version, list(writes.values()), actor=worker[:128]
    )


def run_embed(
    store: Store,
    extractor: Extractor,
    spool_dir: Path,
    *,
    also: Sequence[ImageQualityExtractor] = (),
    worker: str | None = None,
    limit: int | None = None,
    claim_batch: int = DEFAULT_CLAIM_BATCH,
    claim_timeout: timedelta = DEFAULT_CLAIM_TIMEOUT,
    delete_failed: bool = False,
) -> EmbedReport:
    """Embed pending spool rows until none are left (or ``limit`` rows were claimed)."""
    if limit is not None and limit < 0:
        raise UsageError(f"'limit' must be >= 0, got {limit}")
    if claim_batch < 1:
        raise UsageError(f"'claim_batch' must be >= 1, got {claim_batch}")
    worker = worker or default_worker_id()
    report = EmbedReport()
    while limit is None or report.claimed < limit:
        size = claim_batch if limit is None else min(claim_batch, limit - report.claimed)
        claims = store.embeddings.claim_spool(worker, size, stale_before=utcnow() - claim_timeout)
        if not claims:
            break
        try:
            report += _process(store, extractor, spool_dir, worker, claims, delete_failed, also)
        except BaseException:
            # Give the batch back now rather than after claim_timeout (best effort).
            try:
                store.embeddings.release_claims((c.id for c in claims), worker)
            except Exception as exc:  # the original error matters more
                log.warning("could not release claims: %s", exc)
            raise
    return report


def run_bbsd(store: Store, models: list[ModelInfo], *, batch: int = 5000) -> int:
    """Store each model's scores as its ``bbsd:<model>`` embedding; returns new rows.

    Studies missing a score for one of the model's findings are left for a
    later run (their vector would not be finite).
    """
    new = 0
    for model in models:
        backbone = BBSDBackbone(model.name, model.version, list(model.findings))
        while True:
            pending = store.embeddings.prediction_scores_without_embedding(
                model.id, backbone.name, backbone.version, limit=batch
            )
            if not pending:
                break
            vectors = backbone.vectors([scores for _, scores in pending])
            complete = np.isfinite(vectors).all(axis=1)
            writes = [
                EmbeddingWrite(study_id, vectors[i])
                for i, (study_id, _) in enumerate(pending)
                if complete[i]
            ]
            written = store.embeddings.write_embeddings(
                backbone.name, backbone.version, writes, actor="embed-job"
            )
            new += written
            if written == 0 or len(pending) < batch:
                break
    return new


def run_embedding_job(store: Store, settings: Settings, *, as_of: datetime) -> dict[str, int]:
    """The scheduled job: drain the spool with the configured backbone, then BBSD.

    ``as_of`` is accepted for the scheduler's uniform job signature; the spool is
    drained whatever its time.
    """
    del as_of
    config = settings.embedding
    extractor = Extractor(
        create_backbone(config.extractor),
        device=config.device,
        batch_size=config.batch_size,
        num_workers=config.decode_workers,
    )
    report = run_embed(store, extractor, settings.dicom.spool_dir, also=(ImageQualityExtractor(),))
    bbsd = run_bbsd(store, store.registry.models())
    return {"embedded": report.embedded, "failed": report.failed, "bbsd": bbsd}


__all__ = [
    "DEFAULT_CLAIM_BATCH",
    "DEFAULT_CLAIM_TIMEOUT",
    "EmbedReport",
    "default_worker_id",
    "run_bbsd",
    "run_embed",
    "run_embedding_job",
    "spool_path",
]
