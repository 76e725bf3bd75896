"""`surveillance run` serves /healthz, /readyz and /metrics ([service] http_listen).

The end-to-end test runs the real daemon (PostgreSQL, the tansu Kafka broker) and
scrapes it; the readiness rules are also checked in-process on a store whose
schema is behind and on a daemon whose services have not started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from fixtures_kafka import Topics
from prometheus_client.parser import text_string_to_metric_families

from surveillance.core.config import Settings
from surveillance.scheduling.daemon import Daemon
from surveillance.scheduling.health import HealthServer
from surveillance.store import Store
from surveillance.store.engine import make_engine
from surveillance.store.migrations import upgrade

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class _Idle:
    """A service that never started (pure-logic stand-in for a connector)."""

    name = "idle"

    def start(self) -> None: ...

    def stop(self) -> None: ...


def test_readyz_reports_what_is_missing(tmp_path: Path, settings: Settings) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'behind.db'}")
    upgrade(engine, "0004")  # one revision behind the head
    store = Store(engine)
    health = HealthServer(store, settings, "127.0.0.1:0")
    daemon = Daemon([health, _Idle()])
    health.start()
    try:
        base = f"http://127.0.0.1:{health.port}"
        assert requests.get(f"{base}/healthz", timeout=5).text == "ok\n"
        answer = requests.get(f"{base}/readyz", timeout=5)
        assert answer.status_code == 503
        body = answer.json()
        assert body["ready"] is False and body["database"] == "ok"
        assert "run db upgrade" in body["schema"]
        assert body["services"] == {"idle": "not started"}
        assert requests.get(f"{base}/nope", timeout=5).status_code == 404
        upgrade(engine)
        body = requests.get(f"{base}/readyz", timeout=5).json()
        assert body["schema"] == "ok" and body["ready"] is False  # idle still not started
        assert daemon.started == ()
    finally:
        health.stop()
        store.close()


def test_running_daemon_answers_readyz_and_metrics(
    pg_url: str, kafka_broker, kafka_topics: Topics, tmp_path: Path
) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    engine.dispose()
    port = _free_port()
    example = (ROOT / "surveillance" / "examples" / "cxr-pneumothorax.toml").read_text()
    models = example[example.index("[[models]]") : example.index("[drift]")]
    config = tmp_path / "surveillance.toml"
    config.write_text(
        f'[service]\nmode = "production"\ndb_url = "{pg_url}"\n'
        f'pseudonym_key_file = "{tmp_path / "key"}"\nhttp_listen = "127.0.0.1:{port}"\n\n'
        f"{models}\n"
        f'[kafka]\nbootstrap = "{kafka_broker.bootstrap}"\ngroup_id = "{kafka_topics.group}"\n'
        f'predictions_topic = "{kafka_topics.predictions}"\n'
        f'metadata_topic = "{kafka_topics.metadata}"\n'
        f'diagnoses_topic = "{kafka_topics.diagnoses}"\n'
        f"session_timeout_ms = 6000\nheartbeat_interval_ms = 2000\n\n"
        f'[schedules]\ndrift = "every 1h"\nperformance = "every 6h"\n'
    )
    (tmp_path / "key").write_text("cd" * 32 + "\n")
    (tmp_path / "key").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURVEILLANCE_")}
    cli = [sys.executable, "-m", "surveillance", "--config", str(config)]
    subprocess.run([*cli, "models", "load", str(config)], env=env, check=True, timeout=60)
    kafka_broker.produce(
        kafka_topics.predictions,
        [
            {
                "message_id": f"p{i}",
                "model": "cxr-pneumothorax",
                "model_version": "2.1.0",
                "study_instance_uid": f"1.2.3.{i}",
                "outputs": {"pneumothorax": 0.3},
                "predicted_at": "2026-10-01T08:00:00Z",
            }
            for i in range(12)
        ]
        + [b"{not json"],
        partitions=3,
    )
    daemon = subprocess.Popen(
        [*cli, "run"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # generous: shared CPUs; no timing is asserted
        ready = None
        while time.monotonic() < deadline:
            assert daemon.poll() is None, daemon.stdout.read() if daemon.stdout else ""
            try:
                answer = requests.get(f"{base}/readyz", timeout=5)
            except requests.ConnectionError:
                time.sleep(0.3)
                continue
            if answer.status_code == 200:
                ready = answer.json()
                break
            time.sleep(0.3)
        assert ready is not None, "the daemon never became ready"
        assert ready["database"] == "ok" and ready["schema"] == "ok"
        assert ready["services"] == {
            "KafkaConsumerService": "ok",
            "check-worker": "ok",
            "scheduler": "ok",
        }
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200

        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        lags: dict[str, float] = {}
        while time.monotonic() < deadline:
            answer = requests.get(f"{base}/metrics", timeout=10)
            assert answer.status_code == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            samples = _samples(answer.text)
            stored = {
                labels: value
                for (name, labels), value in samples.items()
                if name == "surveillance_kafka_stored_offset"
            }
            letters = samples.get(("surveillance_dead_letters", (("source", "kafka"),)))
            leader = samples.get(("surveillance_scheduler_leader", ()))
            lags = {
                dict(labels)["partition"]: value
                for (name, labels), value in samples.items()
                if name == "surveillance_kafka_consumer_lag"
                and dict(labels)["topic"] == kafka_topics.predictions
            }
            caught_up = len(lags) == 3 and not any(lags.values())
            if sum(stored.values()) >= 13 and letters == 1 and leader == 1 and caught_up:
                break
            time.sleep(0.5)
        assert lags == {"0": 0.0, "1": 0.0, "2": 0.0}
        assert samples[("surveillance_dead_letters", (("source", "kafka"),))] == 1
        assert samples[("surveillance_scheduler_leader", ())] == 1
        assert samples[("surveillance_ready", ())] == 1
        assert (
            samples[
                (
                    "surveillance_ingested_records_total",
                    (("kind", "prediction"), ("source", "kafka")),
                )
            ]
            == 12
        )
        assert samples[("surveillance_open_incidents", (("severity", "critical"),))] == 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            output, _ = daemon.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            output, _ = daemon.communicate()
    assert daemon.returncode == 0, output
    assert json.dumps(ready)  # what the probe saw is plain JSON


def test_k8s_manifests_use_the_probes_and_mount_the_reports_dir() -> None:
    import yaml

    from surveillance.core.config import parse_settings

    k8s = ROOT / "deploy" / "k8s"
    (_, configmap) = yaml.safe_load_all((k8s / "00-namespace-config.yaml").read_text())
    import tomllib

    settings = parse_settings(tomllib.loads(configmap["data"]["surveillance.toml"]))
    assert settings.service.http_listen == "0.0.0.0:9108"
    deployment = next(yaml.safe_load_all((k8s / "20-daemon.yaml").read_text()))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    http = next(p for p in container["ports"] if p["name"] == "http")
    assert http["containerPort"] == int(settings.service.http_listen.rsplit(":", 1)[1])
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.reports.out_dir) in mounts
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    kinds = {d["kind"] for d in yaml.safe_load_all((k8s / "40-quarterly-report.yaml").read_text())}
    assert "CronJob" not in kinds  # the scheduler's quarterly_report job writes them
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "surveillance-rules.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"SurveillanceNoIngest", "SurveillanceNoLeader", "SurveillanceJobFailing"} <= names
