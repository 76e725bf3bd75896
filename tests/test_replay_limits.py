"""A replay is held to the same limits as first intake, and dead-letter payloads keep
only known event kinds (nothing a sender puts in ``kind`` is stored verbatim)."""

from __future__ import annotations

import json
from pathlib import Path

from surveillance.intake.ingest import Ingestor
from surveillance.intake.kafka import replay
from surveillance.store import Store

UID = "1.2.826.0.1.3680043.8.498.77"


def _diagnosis(finding: str, kind: str = "diagnosis") -> str:
    return json.dumps(
        {
            "kind": kind,
            "message_id": f"dx-{finding}-{kind[:8]}",
            "study_instance_uid": UID,
            "finding": finding,
            "present": True,
            "source": "pathology",
            "confirmed_at": "2026-10-01T10:00:00Z",
        }
    )


def test_replay_refuses_what_intake_refused(
    store: Store, ingestor: Ingestor, tmp_path: Path
) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text(_diagnosis("no-such-finding") + "\n")
    counts = ingestor.ingest_jsonl(path)
    assert counts.dead_letters == 1
    (letter,) = store.events.pending_dead_letters()
    assert "unknown finding" in letter.reason

    (outcome,) = replay(store, ingestor, [letter], actor="test")

    assert not outcome.replayed
    assert "unknown finding" in outcome.detail
    assert store.events.pending_dead_letters()[0].replayed_at is None


def test_unknown_kind_is_not_copied_into_the_stored_payload(
    store: Store, ingestor: Ingestor, tmp_path: Path
) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(_diagnosis("pneumothorax", kind="Jane Doe 1970-01-01") + "\n")
    assert ingestor.ingest_jsonl(path).dead_letters == 1
    (letter,) = store.events.pending_dead_letters()
    assert letter.payload is not None
    assert "Jane Doe" not in letter.payload
    assert UID not in letter.payload  # the study UID is pseudonymised as before
