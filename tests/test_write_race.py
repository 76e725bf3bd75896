"""Two writers racing on the same idempotency keys (PostgreSQL, real transactions).

Each writer has its own engine on the test database, so the two batches run in
two backends whose transactions overlap: a ``threading.Barrier`` releases both
``write_batch`` calls together, round after round (seeded), and the rounds
alternate between study skeletons created by the race itself, studies that
exist already (the writers then meet on ``prediction_key`` / ``diagnosis``
first) and batches that also carry a redelivery of a stored message (both
writers take the staging path). The forced-interleaving tests pin one
ordering deterministically: writer A has written its batch and holds its
transaction open until writer B is seen waiting on a lock
(``pg_stat_activity``), then commits.

Invariants: every (message_id, finding) is stored once in ``prediction`` and in
``prediction_key`` (predictions of two months, so in two partitions), every
diagnosis message once; new + duplicate + conflicting = sent per writer and the
new rows of both writers add up to the distinct keys; identical content gives
no dead letter; different content keeps exactly one version per message (whole,
never a mix) and dead-letters the other writer's message as a conflict at its
source position. Embeddings: one row per (study, extractor, version) in
``embedding`` and ``embedding_key``.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import pytest
from sqlalchemy import text

from surveillance.core.events import SourcePosition
from surveillance.store import IngestBatch, Store
from surveillance.store.domain import DiagnosisRecord, IngestCounts, PredictionRecord
from surveillance.store.embeddings import EmbeddingWrite
from surveillance.store.engine import make_engine
from surveillance.store.ingest_writer import write_batch

pytestmark = pytest.mark.postgres

MODEL = "cxr-pneumothorax"
FINDINGS = ("effusion", "pneumothorax")
#: Two calendar months: the predictions land in two monthly partitions.
MONTHS = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
PARTITIONS = {"prediction_y2026m03", "prediction_y2026m04"}
WRITERS = ("A", "B")
T = TypeVar("T")

#: Hang guards only (a deadlock PostgreSQL did not detect): never asserted on.
JOIN_TIMEOUT_S = 300.0
BARRIER_TIMEOUT_S = 120.0


# ---- data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    """One prediction message: one row per finding."""

    message_id: str
    study: str
    at: datetime
    scores: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Diag:
    message_id: str
    study: str
    present: bool


def _study_uid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _moment(rng: random.Random) -> datetime:
    month = rng.choice(MONTHS)
    # whole microseconds within the month, so what comes back compares equal
    return month + timedelta(days=rng.randrange(27), seconds=rng.randrange(86_400))


def _message(rng: random.Random, message_id: str, study: str) -> Msg:
    scores = tuple((f, round(rng.random(), 6)) for f in FINDINGS)
    return Msg(message_id, _study_uid(study), _moment(rng), scores)


def _changed(msg: Msg, i: int) -> Msg:
    """The same message id with other content: another score, or (every 5th) another month."""
    if i % 5 == 4:
        month, other = MONTHS if msg.at < MONTHS[1] else MONTHS[::-1]
        return replace(msg, at=other + (msg.at - month))
    scores = tuple((f, round(s + 0.5 if s < 0.5 else s - 0.5, 6)) for f, s in msg.scores)
    return replace(msg, scores=(msg.scores[0], scores[1]))  # only pneumothorax differs


@dataclass
class Writer:
    """What one writer sends: messages in order, each with its own source position."""

    name: str
    store: Store
    next_offset: int = 0

    def batch(
        self, model_id: int, model_version: str, msgs: list[Msg], diags: list[Diag]
    ) -> tuple[IngestBatch, dict[str, SourcePosition]]:
        batch = IngestBatch()
        positions: dict[str, SourcePosition] = {}
        for m in msgs:
            pos = self._position()
            positions[m.message_id] = pos
            batch.predictions.extend(
                PredictionRecord(
                    message_id=m.message_id,
                    model_id=model_id,
                    model_version=model_version,
                    study_uid_pseudonym=m.study,
                    finding=finding,
                    score=score,
                    predicted_at=m.at,
                    position=pos,
                )
                for finding, score in m.scores
            )
        for d in diags:
            pos = self._position()
            positions[d.message_id] = pos
            batch.diagnoses.append(
                DiagnosisRecord(
                    message_id=d.message_id,
                    study_uid_pseudonym=d.study,
                    finding="pneumothorax",
                    present=d.present,
                    source="pathology",
                    confirmed_at=MONTHS[1] + timedelta(days=20),
                    position=pos,
                )
            )
        return batch, positions

    def _position(self) -> SourcePosition:
        self.next_offset += 1
        return SourcePosition("kafka", f"topic-{self.name}", 0, self.next_offset)


@contextmanager
def _writers(pg_url: str) -> Iterator[dict[str, Writer]]:
    """Two writers, each with its own engine (its own backend) on the test database."""
    stores = [Store(make_engine(pg_url)) for _ in WRITERS]
    try:
        for store in stores:  # connect now, not inside the race
            with store.sessions.scope() as s:
                s.execute(text("SELECT 1"))
        yield {name: Writer(name, store) for name, store in zip(WRITERS, stores, strict=True)}
    finally:
        for store in stores:
            store.close()


def _race(*jobs: Callable[[], T]) -> list[T]:
    """Run ``jobs`` in threads released together by a barrier; re-raise the first error."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException | None] = [None] * len(jobs)

    def run(i: int, job: Callable[[], T]) -> None:
        try:
            barrier.wait(timeout=BARRIER_TIMEOUT_S)
            results[i] = job()
        except BaseException as exc:  # handed to the test thread
            errors[i] = exc

    threads = [
        threading.Thread(target=run, args=(i, job), daemon=True, name=f"writer-{i}")
        for i, job in enumerate(jobs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a writer never returned (undetected deadlock?)"
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def _sql(store: Store, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    with store.sessions.scope() as s:
        return [tuple(r) for r in s.execute(text(sql), params)]


def _create_studies(store: Store, uids: list[str]) -> None:
    """Study skeletons committed before the race (as ``_ensure_studies`` writes them)."""
    with store.sessions.scope() as s:
        s.execute(
            text(
                "INSERT INTO study (uid_pseudonym, studied_at, received_at, has_metadata) "
                "SELECT u, now(), now(), false FROM unnest(CAST(:uids AS text[])) AS u "
                "ON CONFLICT DO NOTHING"
            ),
            {"uids": uids},
        )


def _prepare(pg_store: Store) -> tuple[int, str]:
    pg_store.partitions.ensure(MONTHS[1], since=MONTHS[0])
    model = pg_store.registry.model(MODEL)
    return model.id, model.version


# ---- what was stored ---------------------------------------------------------------------


def _stored_predictions(store: Store) -> dict[str, tuple[datetime, dict[str, float], str]]:
    """message id -> (predicted_at, {finding: score}, study uid), asserting one row per key."""
    rows = _sql(
        store,
        "SELECT p.message_id, p.finding, p.score, p.predicted_at, s.uid_pseudonym, "
        "p.tableoid::regclass::text FROM prediction p JOIN study s ON s.id = p.study_id",
    )
    seen: dict[tuple[str, str], int] = {}
    out: dict[str, tuple[datetime, dict[str, float], str]] = {}
    partitions: set[str] = set()
    for message_id, finding, score, at, study, partition in rows:
        seen[(message_id, finding)] = seen.get((message_id, finding), 0) + 1
        stored_at, scores, stored_study = out.setdefault(message_id, (at, {}, study))
        assert (stored_at, stored_study) == (at, study), f"{message_id}: rows of two versions"
        scores[finding] = score
        partitions.add(partition)
    twice = {k: n for k, n in seen.items() if n > 1}
    assert not twice, f"keys stored more than once in prediction: {sorted(twice.items())[:10]}"
    assert partitions == PARTITIONS, f"rows landed in {partitions}"

    keys = _sql(store, "SELECT message_id, finding, predicted_at FROM prediction_key")
    key_at = {(m, f): at for m, f, at in keys}
    assert len(key_at) == len(keys)
    assert set(key_at) == set(seen), (
        f"prediction_key and prediction disagree: only in key table "
        f"{sorted(set(key_at) - set(seen))[:10]}, only in prediction "
        f"{sorted(set(seen) - set(key_at))[:10]}"
    )
    wrong = [k for k in key_at if key_at[k] != out[k[0]][0]]
    assert not wrong, f"prediction_key.predicted_at names another partition for {wrong[:10]}"
    return out


def _stored_diagnoses(store: Store) -> dict[str, tuple[bool, str]]:
    rows = _sql(
        store,
        "SELECT d.message_id, d.present, s.uid_pseudonym FROM diagnosis d "
        "JOIN study s ON s.id = d.study_id",
    )
    out = {m: (present, study) for m, present, study in rows}
    assert len(out) == len(rows), "a diagnosis message id stored twice"
    return out


@dataclass(frozen=True)
class Letter:
    position: tuple[str, int]
    kind: str
    reason: str
    payload: dict[str, Any]


def _dead_letters(store: Store) -> list[Letter]:
    rows = _sql(store, 'SELECT locator, "offset", kind, reason, payload FROM dead_letter')
    return [
        Letter((loc, off), kind, reason, json.loads(payload))
        for loc, off, kind, reason, payload in rows
    ]


def _pos(p: SourcePosition) -> tuple[str, int]:
    assert p.offset is not None
    return (p.locator, p.offset)


# ---- one round of the race ---------------------------------------------------------------


@dataclass
class Round:
    r: int
    sent: dict[str, tuple[list[Msg], list[Diag]]]
    positions: dict[str, dict[str, SourcePosition]]
    counts: dict[str, IngestCounts]
    shared: list[str]  # prediction message ids sent by both
    shared_diags: list[str]


def _run_round(
    rng: random.Random,
    r: int,
    writers: dict[str, Writer],
    pg_store: Store,
    model: tuple[int, str],
    *,
    different: bool,
    previous: Round | None,
    n_msgs: int,
    n_diags: int,
) -> Round:
    """Build both writers' batches (half of the messages shared) and race them."""
    mode = r % 3  # 0: studies made by the race, 1: studies exist, 2: + a stored redelivery
    half, dhalf = n_msgs // 2, n_diags // 2
    shared = [_message(rng, f"r{r}-s{i:05d}", f"r{r}-s{i}") for i in range(half)]
    shared_diags = [
        Diag(f"d{r}-s{i:05d}", _study_uid(f"r{r}-s{i}"), rng.random() < 0.5) for i in range(dhalf)
    ]
    sent: dict[str, tuple[list[Msg], list[Diag]]] = {}
    for w in WRITERS:
        own = [_message(rng, f"r{r}-{w}{i:05d}", f"r{r}-{w}{i}") for i in range(n_msgs - half)]
        own_diags = [
            Diag(f"d{r}-{w}{i:05d}", _study_uid(f"r{r}-{w}{i}"), rng.random() < 0.5)
            for i in range(n_diags - dhalf)
        ]
        msgs, diags = [*shared, *own], [*shared_diags, *own_diags]
        if different and w == "B":
            msgs = [_changed(m, i) for i, m in enumerate(shared)] + own
            diags = [replace(d, present=not d.present) for d in shared_diags] + own_diags
        if mode == 2 and previous is not None:
            # this writer's own messages of the last round again: stored, same content,
            # and their ids sort first, so the straight COPY fails at once (staging path)
            old_msgs, old_diags = previous.sent[w]
            mine, mine_d = f"r{previous.r}-{w}", f"d{previous.r}-{w}"
            msgs += [m for m in old_msgs if m.message_id.startswith(mine)][:50]
            diags += [d for d in old_diags if d.message_id.startswith(mine_d)][:10]
        rng.shuffle(msgs)
        rng.shuffle(diags)
        sent[w] = (msgs, diags)
    if mode >= 1:
        _create_studies(pg_store, sorted({m.study for w in WRITERS for m in sent[w][0]}))

    batches = {w: writers[w].batch(*model, *sent[w]) for w in WRITERS}
    jobs = [(lambda w=w: writers[w].store.events.write_batch(batches[w][0])) for w in WRITERS]
    results = _race(*jobs)
    return Round(
        r=r,
        sent=sent,
        positions={w: batches[w][1] for w in WRITERS},
        counts=dict(zip(WRITERS, results, strict=True)),
        shared=[m.message_id for m in shared],
        shared_diags=[d.message_id for d in shared_diags],
    )


def _check_round_counts(rnd: Round, *, different: bool) -> None:
    a, b = (rnd.counts[w] for w in WRITERS)
    redelivered = {w: 0 for w in WRITERS}
    redelivered_diags = {w: 0 for w in WRITERS}
    for w in WRITERS:
        msgs, diags = rnd.sent[w]
        this, this_d = f"r{rnd.r}-", f"d{rnd.r}-"
        redelivered[w] = sum(len(m.scores) for m in msgs if not m.message_id.startswith(this))
        redelivered_diags[w] = sum(1 for d in diags if not d.message_id.startswith(this_d))
    sent_rows = {w: sum(len(m.scores) for m in rnd.sent[w][0]) for w in WRITERS}
    n_shared_rows = sum(len(FINDINGS) for _ in rnd.shared)
    distinct_rows = sent_rows["A"] + sent_rows["B"] - n_shared_rows - sum(redelivered.values())
    sent_diags = {w: len(rnd.sent[w][1]) for w in WRITERS}
    distinct_diags = (
        sent_diags["A"] + sent_diags["B"] - len(rnd.shared_diags) - sum(redelivered_diags.values())
    )
    detail = f"counts A={a}, B={b}"

    assert a.predictions_new + b.predictions_new == distinct_rows, detail
    assert a.diagnoses_new + b.diagnoses_new == distinct_diags, detail
    for w, c in rnd.counts.items():
        assert c.predictions_new + c.predictions_duplicate <= sent_rows[w], detail
        assert c.diagnoses_new + c.diagnoses_duplicate <= sent_diags[w], detail
        conflicting_rows = sent_rows[w] - c.predictions_new - c.predictions_duplicate
        conflicting_diags = sent_diags[w] - c.diagnoses_new - c.diagnoses_duplicate
        assert c.conflicts == conflicting_rows // len(FINDINGS) + conflicting_diags, detail
        assert c.dead_letters == c.conflicts, detail
    if different:
        # every shared message is written by one writer and rejected by the other
        assert a.conflicts + b.conflicts == len(rnd.shared) + len(rnd.shared_diags), detail
        assert a.predictions_duplicate == redelivered["A"], detail
        assert b.predictions_duplicate == redelivered["B"], detail
        assert a.diagnoses_duplicate == redelivered_diags["A"], detail
        assert b.diagnoses_duplicate == redelivered_diags["B"], detail
    else:
        assert a.conflicts == b.conflicts == 0, detail
        assert a.dead_letters == b.dead_letters == 0, detail
        assert a.predictions_duplicate + b.predictions_duplicate == n_shared_rows + sum(
            redelivered.values()
        ), detail
        assert a.diagnoses_duplicate + b.diagnoses_duplicate == len(rnd.shared_diags) + sum(
            redelivered_diags.values()
        ), detail


def _check_store(pg_store: Store, rounds: list[Round], *, different: bool) -> None:
    stored = _stored_predictions(pg_store)
    stored_diags = _stored_diagnoses(pg_store)
    letters = _dead_letters(pg_store)
    expected_letters: dict[tuple[str, int], str] = {}  # position -> message id
    expected_ids: set[str] = set()
    expected_diag_ids: set[str] = set()
    for rnd in rounds:
        versions: dict[str, dict[str, Msg]] = {}
        diag_versions: dict[str, dict[str, Diag]] = {}
        for w in WRITERS:
            msgs, diags = rnd.sent[w]
            for m in msgs:
                versions.setdefault(m.message_id, {})[w] = m
            for d in diags:
                diag_versions.setdefault(d.message_id, {})[w] = d
        expected_ids |= set(versions)
        expected_diag_ids |= set(diag_versions)
        for message_id, by_writer in versions.items():
            if message_id not in stored:
                continue  # reported below as missing
            at, scores, study = stored[message_id]
            found = [
                w
                for w, m in by_writer.items()
                if (m.at, dict(m.scores), m.study) == (at, scores, study)
            ]
            assert found, f"{message_id}: stored {at}, {scores} is no writer's version"
            if different and message_id in rnd.shared:
                loser = next(w for w in WRITERS if w not in found)
                expected_letters[_pos(rnd.positions[loser][message_id])] = message_id
        for message_id, diag_by_writer in diag_versions.items():
            if message_id not in stored_diags:
                continue
            present, study = stored_diags[message_id]
            found = [
                w for w, d in diag_by_writer.items() if (d.present, d.study) == (present, study)
            ]
            assert found, f"{message_id}: stored present={present} is no writer's version"
            if different and message_id in rnd.shared_diags:
                loser = next(w for w in WRITERS if w not in found)
                expected_letters[_pos(rnd.positions[loser][message_id])] = message_id

    missing = sorted(expected_ids - set(stored))
    assert not missing, f"{len(missing)} prediction messages lost, e.g. {missing[:5]}"
    assert set(stored) == expected_ids
    assert sum(len(s) for _, s, _ in stored.values()) == len(expected_ids) * len(FINDINGS)
    missing_diags = sorted(expected_diag_ids - set(stored_diags))
    assert not missing_diags, f"{len(missing_diags)} diagnoses lost, e.g. {missing_diags[:5]}"
    assert set(stored_diags) == expected_diag_ids

    by_position = {letter.position: letter for letter in letters}
    assert len(by_position) == len(letters)
    absent = sorted(set(expected_letters) - set(by_position))
    extra = sorted(set(by_position) - set(expected_letters))
    assert not absent and not extra, (
        f"{len(absent)} conflicts without a dead letter (e.g. "
        f"{[expected_letters[p] for p in absent[:5]]}), {len(extra)} unexpected dead letters "
        f"(e.g. {[by_position[p].reason for p in extra[:3]]})"
    )
    for position, message_id in expected_letters.items():
        letter = by_position[position]
        kind = "diagnosis" if message_id.startswith("d") else "prediction"
        assert letter.kind == kind
        assert letter.reason.startswith(
            f"conflict: {kind} message_id '{message_id}' is already stored with a different "
        ), letter.reason
        assert letter.payload["message_id"] == message_id


# ---- tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("different", [False, True], ids=["same-content", "different-content"])
def test_two_writers_racing_on_shared_keys_store_each_key_once(
    pg_store: Store, pg_url: str, different: bool
) -> None:
    """Six seeded rounds, 2,000 predictions + 200 diagnoses per writer, half shared."""
    model = _prepare(pg_store)
    rng = random.Random(20261130 + different)
    rounds: list[Round] = []
    with _writers(pg_url) as writers:
        for r in range(6):
            rnd = _run_round(
                rng,
                r,
                writers,
                pg_store,
                model,
                different=different,
                previous=rounds[-1] if rounds else None,
                n_msgs=1000,
                n_diags=200,
            )
            _check_round_counts(rnd, different=different)
            rounds.append(rnd)
    _check_store(pg_store, rounds, different=different)
    total_new = sum(c.predictions_new for rnd in rounds for c in rnd.counts.values())
    assert total_new == _sql(pg_store, "SELECT count(*) FROM prediction")[0][0]
    assert total_new == _sql(pg_store, "SELECT count(*) FROM prediction_key")[0][0]
    assert _sql(pg_store, "SELECT count(*) FROM prediction_default") == [(0,)]


def _wait_until_waiting_on_lock(store: Store, pid: int, done: threading.Event) -> None:
    """Poll until backend ``pid`` waits on a lock (hang guard: gives up after 60 s)."""
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    while datetime.now(UTC) < deadline:
        if done.is_set():
            raise AssertionError("writer B finished without waiting for writer A's transaction")
        rows = _sql(store, "SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid", pid=pid)
        if rows and rows[0][0] == "Lock":
            return
        done.wait(0.01)
    raise AssertionError(f"writer B (pid {pid}) never waited on writer A's keys")


def _a_holds_while_b_waits(
    pg_store: Store, a: Writer, b: Writer, batch_a: IngestBatch, batch_b: IngestBatch
) -> tuple[IngestCounts, IngestCounts]:
    """A writes ``batch_a`` and keeps its transaction open until B, writing ``batch_b``
    in its own backend, is seen waiting on a lock; then A commits and B finishes."""
    pid: list[int] = []
    started, done = threading.Event(), threading.Event()
    result: list[IngestCounts] = []
    error: list[BaseException] = []

    def write_b() -> None:
        try:
            with b.store.sessions.scope() as s:
                pid.append(int(s.execute(text("SELECT pg_backend_pid()")).scalar_one()))
                started.set()
                result.append(write_batch(s, batch_b))
        except BaseException as exc:  # handed to the test thread
            error.append(exc)
        finally:
            started.set()
            done.set()

    thread = threading.Thread(target=write_b, daemon=True, name="writer-B")
    with a.store.sessions.scope() as s:
        counts_a = write_batch(s, batch_a)
        thread.start()
        assert started.wait(BARRIER_TIMEOUT_S) and pid, "writer B did not start"
        _wait_until_waiting_on_lock(pg_store, pid[0], done)
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive(), "writer B never returned after A committed"
    if error:
        raise error[0]
    [counts_b] = result
    return counts_a, counts_b


@pytest.mark.parametrize("path", ["straight", "staging"])
@pytest.mark.parametrize("different", [False, True], ids=["same-content", "different-content"])
def test_writer_waiting_on_an_uncommitted_key_sees_it_after_commit(
    pg_store: Store, pg_url: str, path: str, different: bool
) -> None:
    """A writes and holds its transaction; B, on the same keys, waits on a lock; A commits.

    ``straight``: B's batch is all new to the store, so B's straight COPY meets A's
    uncommitted key. ``staging``: B's batch also redelivers a stored message whose id
    sorts first, so B's COPY fails at once and B reaches A's keys through the staging
    path (conflict lookup, then INSERT ... ON CONFLICT DO NOTHING).
    """
    model_id, version = _prepare(pg_store)
    rng = random.Random(7)
    shared = [_message(rng, f"m-s{i:03d}", f"s{i}") for i in range(40)]
    shared_diags = [Diag(f"d-s{i:03d}", _study_uid(f"s{i}"), True) for i in range(10)]
    own = {w: [_message(rng, f"m-{w}{i:03d}", f"{w}{i}") for i in range(40)] for w in WRITERS}
    stored_before = _message(rng, "a-stored", "stored")
    msgs_b = [_changed(m, i) for i, m in enumerate(shared)] if different else list(shared)
    diags_b = [replace(d, present=False) for d in shared_diags] if different else shared_diags

    with _writers(pg_url) as writers:
        a, b = writers["A"], writers["B"]
        first, _ = b.batch(model_id, version, [stored_before], [])
        assert pg_store.events.write_batch(first).predictions_new == len(FINDINGS)
        _create_studies(pg_store, sorted({m.study for m in [*shared, *own["A"], *own["B"]]}))
        batch_a, _ = a.batch(model_id, version, [*shared, *own["A"]], shared_diags)
        redelivery = [stored_before] if path == "staging" else []
        batch_b, positions_b = b.batch(
            model_id, version, [*redelivery, *msgs_b, *own["B"]], diags_b
        )

        counts_a, counts_b = _a_holds_while_b_waits(pg_store, a, b, batch_a, batch_b)

    rows_a = len(FINDINGS) * (len(shared) + len(own["A"]))
    assert (counts_a.predictions_new, counts_a.diagnoses_new, counts_a.conflicts) == (
        rows_a,
        len(shared_diags),
        0,
    )
    own_rows_b = len(FINDINGS) * len(own["B"])
    redelivered_rows = len(FINDINGS) * len(redelivery)
    stored = _stored_predictions(pg_store)
    for m in shared:  # A committed first: A's version is the stored one
        assert stored[m.message_id] == (m.at, dict(m.scores), m.study), m.message_id
    assert _stored_diagnoses(pg_store) == {d.message_id: (True, d.study) for d in shared_diags}
    assert set(stored) == {m.message_id for m in [stored_before, *shared, *own["A"], *own["B"]]}
    letters = {letter.position: letter for letter in _dead_letters(pg_store)}
    if not different:
        assert counts_b.predictions_new == own_rows_b, counts_b
        assert counts_b.predictions_duplicate == len(FINDINGS) * len(shared) + redelivered_rows
        assert counts_b.diagnoses_duplicate == len(shared_diags)
        assert (counts_b.conflicts, counts_b.dead_letters) == (0, 0), counts_b
        assert letters == {}
        return
    rejected_ids = [m.message_id for m in shared] + [d.message_id for d in shared_diags]
    rejected = {_pos(positions_b[i]): i for i in rejected_ids}
    assert set(letters) == set(rejected), (
        f"B's {len(rejected)} conflicting messages: {len(set(rejected) - set(letters))} have no "
        f"dead letter; B's counts {counts_b}"
    )
    for position, message_id in rejected.items():
        assert f"message_id '{message_id}' is already stored with a different" in (
            letters[position].reason
        )
    assert counts_b.conflicts == len(shared) + len(shared_diags), counts_b
    assert counts_b.predictions_new == own_rows_b, counts_b
    assert counts_b.predictions_duplicate == redelivered_rows, counts_b
    assert counts_b.diagnoses_duplicate == 0, counts_b


def test_two_writers_racing_on_embeddings_store_each_key_once(pg_store: Store, pg_url: str) -> None:
    """Overlapping (study, extractor, version) keys, different vectors: the first one wins."""
    uids = [_study_uid(f"e{i}") for i in range(1200)]
    _create_studies(pg_store, uids)
    study_ids = [sid for (sid,) in _sql(pg_store, "SELECT id FROM study ORDER BY id")]
    rng = random.Random(11)
    offered: dict[int, list[bytes]] = {}
    seen: set[tuple[int, str]] = set()
    total_new = 0
    with _writers(pg_url) as writers:
        for r in range(5):
            chosen = rng.sample(study_ids, 600)
            shared, rest = chosen[:300], chosen[300:]
            jobs = []
            for k, w in enumerate(WRITERS):
                mine = shared + rest[k * 150 : (k + 1) * 150]
                rng.shuffle(mine)
                writes = [
                    EmbeddingWrite(sid, np.full(8, r * 10 + k + sid / 1e4, dtype=np.float32))
                    for sid in mine
                ]
                for wr in writes:
                    offered.setdefault(wr.study_id, []).append(
                        np.ascontiguousarray(wr.vector, dtype="<f4").tobytes()
                    )
                store = writers[w].store
                jobs.append(
                    lambda store=store, writes=writes, r=r: store.embeddings.write_embeddings(
                        "conv-ae", f"v{r % 2}", writes, actor="test"
                    )
                )
            new_a, new_b = _race(*jobs)
            fresh = {(sid, f"v{r % 2}") for sid in chosen} - seen
            seen |= fresh
            assert new_a + new_b == len(fresh), (r, new_a, new_b, len(fresh))
            total_new += new_a + new_b

    rows = _sql(pg_store, "SELECT study_id, extractor_version, vector FROM embedding")
    keys = _sql(pg_store, "SELECT study_id, extractor_version FROM embedding_key")
    stored_keys = [(sid, v) for sid, v, _ in rows]
    assert len(set(stored_keys)) == len(stored_keys), "an embedding key stored twice"
    assert sorted(stored_keys) == sorted(keys), "embedding and embedding_key disagree"
    assert total_new == len(rows)
    for sid, _, vector in rows:
        assert bytes(vector) in offered[sid], f"study {sid}: stored vector was never offered"


@pytest.mark.parametrize("path", ["straight", "staging"])
def test_diagnosis_conflict_with_an_uncommitted_writer_is_dead_lettered(
    pg_store: Store, pg_url: str, path: str
) -> None:
    """Diagnoses alone (their own unique key, no key table): B's conflicting diagnoses
    meet A's uncommitted ones; after A commits they must be dead letters, not duplicates."""
    model_id, version = _prepare(pg_store)
    shared = [Diag(f"d-s{i:03d}", _study_uid(f"s{i}"), True) for i in range(30)]
    own_b = [Diag(f"d-B{i:03d}", _study_uid(f"B{i}"), True) for i in range(30)]
    stored_before = Diag("a-stored", _study_uid("stored"), True)
    with _writers(pg_url) as writers:
        a, b = writers["A"], writers["B"]
        first, _ = b.batch(model_id, version, [], [stored_before])
        assert pg_store.events.write_batch(first).diagnoses_new == 1
        _create_studies(pg_store, sorted({d.study for d in [*shared, *own_b]}))
        batch_a, _ = a.batch(model_id, version, [], shared)
        redelivery = [stored_before] if path == "staging" else []
        changed = [replace(d, present=False) for d in shared]
        batch_b, positions_b = b.batch(model_id, version, [], [*redelivery, *changed, *own_b])
        counts_a, counts_b = _a_holds_while_b_waits(pg_store, a, b, batch_a, batch_b)

    assert (counts_a.diagnoses_new, counts_a.conflicts) == (len(shared), 0)
    stored = _stored_diagnoses(pg_store)
    for d in shared:  # A committed first: A's version is kept
        assert stored[d.message_id] == (True, d.study), d.message_id
    assert set(stored) == {d.message_id for d in [stored_before, *shared, *own_b]}
    letters = {letter.position: letter for letter in _dead_letters(pg_store)}
    rejected = {_pos(positions_b[d.message_id]): d.message_id for d in shared}
    assert set(letters) == set(rejected), (
        f"B's {len(rejected)} conflicting diagnoses: {len(set(rejected) - set(letters))} have "
        f"no dead letter; B's counts {counts_b}"
    )
    for position, message_id in rejected.items():
        assert letters[position].reason.startswith(
            f"conflict: diagnosis message_id '{message_id}' is already stored with a different "
            "present"
        ), letters[position].reason
    assert (counts_b.diagnoses_new, counts_b.diagnoses_duplicate, counts_b.conflicts) == (
        len(own_b),
        len(redelivery),
        len(shared),
    )
