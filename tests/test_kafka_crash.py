"""kill -9 the consuming daemon at random points: exactly N rows, no duplicates.

Offsets are committed in the same PostgreSQL transaction as the rows, so a
process killed anywhere (mid-batch, mid-commit, mid-rebalance) restarts from
the last committed offsets, and the idempotent writes absorb whatever it reads
twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_kafka import KafkaBroker, Topics
from sqlalchemy import func, select, tuple_

from surveillance.store import Store
from surveillance.store.models import ConsumerOffsetRow, PredictionRow

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("db_url", ["postgres"], indirect=True),
]

N = 3000
PARTITIONS = 3
KILLS = 4


def _rows(store: Store) -> tuple[int, int]:
    with store.sessions.scope() as s:
        total, distinct = s.execute(
            select(
                func.count(),
                func.count(tuple_(PredictionRow.message_id, PredictionRow.finding).distinct()),
            )
        ).one()
        return int(total), int(distinct)


def _consumer(config: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "surveillance", "--config", str(config), "kafka", "consume",
         "--batch-size", "20", "--session-timeout-ms", "6000", "--heartbeat-ms", "2000", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.mark.slow
def test_kill_9_at_random_points_loses_and_duplicates_nothing(
    store: Store,
    db_url: str,
    kafka_broker: KafkaBroker,
    kafka_topics: Topics,
    tmp_path: Path,
) -> None:
    t = kafka_topics
    kafka_broker.produce(
        t.predictions,
        [
            {
                "message_id": f"crash-{i}",
                "model": "cxr-pneumothorax",
                "model_version": "2.1.0",
                "study_instance_uid": f"1.2.826.0.1.3680043.8.498.{i % 700}",
                "outputs": {"pneumothorax": (i % 100) / 100},
                "predicted_at": "2026-08-01T10:00:00Z",
            }
            for i in range(N)
        ],
        partitions=PARTITIONS,
    )
    config = tmp_path / "kafka.toml"
    config.write_text(
        "[kafka]\n" + "".join(f'{k.split(".")[1]} = "{v}"\n'
                              for k, v in t.overrides(kafka_broker.bootstrap).items())
    )  # fmt: skip
    key = tmp_path / "pseudonym.key"
    key.write_text("ef" * 32 + "\n")
    key.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEILLANCE_")}
    env.update(SURVEILLANCE_DB_URL=db_url, SURVEILLANCE_PSEUDONYM_KEY_FILE=str(key))

    rng = random.Random(20260801)
    thresholds = sorted(rng.sample(range(N // 10, N * 9 // 10), KILLS))
    killed_at: list[int] = []
    for threshold in thresholds:
        process = _consumer(config, env)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and process.poll() is None:
                if _rows(store)[0] >= threshold:
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.05))  # land anywhere: mid-batch, mid-commit, between
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
        finally:
            process.send_signal(signal.SIGKILL)
            output = process.communicate(timeout=30)[0].decode(errors="replace")
        killed_at.append(_rows(store)[0])
        assert "Traceback" not in output, output
    assert len([n for n in killed_at if 0 < n < N]) >= 3, killed_at

    final = _consumer(config, env, "--once", "--max-seconds", "120")
    output = final.communicate(timeout=180)[0].decode(errors="replace")
    assert final.returncode == 0, output

    assert _rows(store) == (N, N)
    with store.sessions.scope() as s:
        offsets = dict(
            s.execute(
                select(ConsumerOffsetRow.partition, ConsumerOffsetRow.next_offset).where(
                    ConsumerOffsetRow.consumer_group == t.group,
                    ConsumerOffsetRow.topic == t.predictions,
                )
            ).all()
        )
    assert offsets == {p: N // PARTITIONS for p in range(PARTITIONS)}
