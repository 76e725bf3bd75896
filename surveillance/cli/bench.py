"""Benchmarks at real scale (JSON figures; never timed tests).

* ``surveillance bench panels [--build N]``: every dashboard query (panels,
  annotations, template variables) under ``EXPLAIN ANALYZE``, against the goal
  of 200 ms each at 1M predictions. ``--build N`` first COPYs a synthetic
  history of N predictions into the database.
* ``surveillance bench check --predictions N --scanners 300``: COPYs a
  synthetic history, then times ``surveillance check`` as a child process
  (wall, CPU, peak RSS) for the first full run and for the next day's run.
* ``surveillance bench ingest-jsonl --messages N``: JSONL predictions only,
  JSONL with DICOM-JSON headers (studies/s), and the database write path
  beside a plain COPY of the same rows into an unindexed table, in one run.
  Each file is also parsed once without writing (``intake_only_per_s``:
  validation and pseudonyms alone), to show where the time goes.
* ``surveillance bench ingest --messages N``: Kafka -> PostgreSQL end to end
  beside a bare kafka-python consumer of the same topic and the same
  consumer plus the intake's parsing without the database
  (``consume_and_parse_msgs_per_s``), and a plain COPY of the same rows.

They write into the database they are pointed at: use a scratch PostgreSQL
database (``--db-url``). ``ingest`` and ``ingest-jsonl`` delete their
predictions and study skeletons afterwards; the header run's studies (with
their metadata, sites and scanners) stay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from surveillance.cli.app import (
    AppContext,
    group,
    kafka_bootstrap,
    kafka_service,
    pass_app,
    print_json,
    registered_model,
    require_postgres,
    with_consumer_options,
)

PANEL_GOAL_MS = 200.0


def _build(
    store: Any, model: Any, predictions: int, scanners: int, sites: int, days: int, end: datetime
) -> dict[str, Any]:
    figures = store.bench.build_synthetic(
        model_id=model.id,
        model_version=model.version,
        findings=sorted(model.findings),
        predictions=predictions,
        scanners=scanners,
        sites=sites,
        days=days,
        end=end,
        tag=uuid.uuid4().hex[:8],
    )
    return {
        "sites": figures.sites,
        "scanners": figures.scanners,
        "studies": figures.studies,
        "predictions": figures.predictions,
        "diagnoses": figures.diagnoses,
        "first_study_at": figures.first_study_at.isoformat(),
        "last_study_at": figures.last_study_at.isoformat(),
        "seconds": round(figures.seconds, 1),
        "predictions_per_s": round(figures.predictions / figures.seconds),
    }


_build_options = [
    click.option(
        "--scanners", type=click.IntRange(1, 100_000), default=300, show_default=True,
        help="Scanners in the synthetic history.",
    ),
    click.option(
        "--sites", type=click.IntRange(1, 10_000), default=50, show_default=True,
        help="Sites the scanners are spread over.",
    ),
    click.option(
        "--days", type=click.IntRange(2, 3650), default=120, show_default=True,
        help="Days of history.",
    ),
    click.option("--model", "model_name", default=None, help="Registered model (default: first)."),
]  # fmt: skip


def _with_build_options(func: Any) -> Any:
    for option in reversed(_build_options):
        func = option(func)
    return func


# ---- panels -----------------------------------------------------------------------------


def _time_range(dashboard_time: dict[str, str], now: datetime) -> tuple[datetime, datetime]:
    """Grafana's default range of a dashboard ("now-7d" .. "now")."""
    units = {"m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = dashboard_time.get("from", "now-7d")
    if text.startswith("now-") and text[-1] in units and text[4:-1].isdigit():
        return now - timedelta(seconds=int(text[4:-1]) * units[text[-1]]), now
    return now - timedelta(days=7), now


def panel_figures(
    store: Any, model_name: str, now: datetime, random_page_cost: float | None = None
) -> list[dict[str, Any]]:
    """EXPLAIN ANALYZE of every dashboard query with Grafana's default range."""
    from dashboards.provisioning import dashboards
    from dashboards.sql import interpolate, panel_queries

    ranges = {d["uid"]: _time_range(d.get("time", {}), now) for d in dashboards()}
    with store.sessions.scope() as s:
        from sqlalchemy import text

        sites = [r[0] for r in s.execute(text("SELECT label FROM site ORDER BY label"))]
        scanners = [r[0] for r in s.execute(text("SELECT label FROM device ORDER BY label"))]
    variables: dict[str, Any] = {
        "model": model_name,
        "site": sites or ["(none)"],
        "scanner": scanners or ["(none)"],
        "metric": "sensitivity",
    }
    out = []
    for query in panel_queries():
        start, end = ranges[query.dashboard]
        sql = interpolate(query.sql, variables, start, end)
        figures = store.bench.explain(sql, random_page_cost)
        out.append(
            {
                "dashboard": query.dashboard,
                "panel": query.title,
                "kind": query.kind,
                "range": f"{start:%Y-%m-%dT%H:%MZ}..{end:%Y-%m-%dT%H:%MZ}",
                **figures,
                "goal_ms": PANEL_GOAL_MS,
                "met": figures["execution_ms"] + figures["planning_ms"] < PANEL_GOAL_MS,
            }
        )
    return out


@click.command("panels")
@click.option(
    "--build",
    "build",
    type=click.IntRange(0, 100_000_000),
    default=0,
    show_default=True,
    help="First COPY a synthetic history of this many predictions (0: use what is there).",
)
@_with_build_options
@click.option(
    "--random-page-cost",
    type=click.FloatRange(0.1, 100),
    default=None,
    help="Plan with this random_page_cost (1.1 for SSD, as deploy/OPERATIONS.md advises); "
    "default: the server's setting.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def bench_panels(
    app: AppContext, build: int, scanners: int, sites: int, days: int,
    model_name: str | None, random_page_cost: float | None, as_json: bool,
) -> None:  # fmt: skip
    """EXPLAIN ANALYZE every dashboard query (goal: < 200 ms each at 1M predictions)."""
    require_postgres(app, "bench panels")
    store = app.store()
    model = registered_model(store, model_name)
    now = datetime.now(UTC)
    built = _build(store, model, build, scanners, sites, days, now) if build else None
    panels = panel_figures(store, model.name, now, random_page_cost)
    with store.sessions.scope() as s:
        from sqlalchemy import text

        predictions = int(s.execute(text("SELECT count(*) FROM prediction")).scalar_one())
    slowest = max(panels, key=lambda p: p["execution_ms"])
    figures = {
        "predictions_in_database": predictions,
        "built": built,
        "random_page_cost": random_page_cost,
        "panels": panels,
        "all_met": all(p["met"] for p in panels),
        "slowest": f"{slowest['dashboard']} / {slowest['panel']}: {slowest['execution_ms']} ms",
        "cpu_count": os.cpu_count(),
    }
    if as_json:
        print_json(figures)
        return
    for p in panels:
        mark = "ok " if p["met"] else "SLOW"
        click.echo(
            f"{mark} {p['execution_ms']:8.1f} ms  {p['dashboard']} / {p['panel']}"
            + (f"  seq scan: {', '.join(p['large_seq_scans'])}" if p["large_seq_scans"] else "")
        )
    click.echo(f"{predictions} predictions; all under {PANEL_GOAL_MS:.0f} ms: {figures['all_met']}")


# ---- check ------------------------------------------------------------------------------


#: Runs ``python -m surveillance ARGS`` and, at exit, writes the process's own peak
#: resident size (``VmHWM``, KiB) to the file named by $SURVEILLANCE_BENCH_HWM.
_PEAK_RSS_WRAPPER = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                with open(os.environ["SURVEILLANCE_BENCH_HWM"], "w") as out:
                    out.write(line.split()[1])
atexit.register(_peak)
sys.argv = ["surveillance", *sys.argv[1:]]
runpy.run_module("surveillance", run_name="__main__")
"""


def _timed_child(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``python -m surveillance ARGS`` (``argv``: the ARGS); wall seconds, CPU
    seconds and peak RSS of that child alone.

    The peak is the child's own ``VmHWM``: ``ru_maxrss`` from ``wait4`` is no use
    here, since Linux carries the parent's resident size at the fork over to
    the child (this process holds the built history, ~1.2 GB at 10M), so a small
    child would report the parent's size.
    """
    started = time.perf_counter()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(mode="r") as peak,
    ):
        child = [sys.executable, "-c", _PEAK_RSS_WRAPPER, *argv]
        proc = subprocess.Popen(
            child, stdout=out, stderr=err, env={**env, "SURVEILLANCE_BENCH_HWM": peak.name}
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        own_peak = peak.read().strip()
    peak_kib = int(own_peak) if own_peak.isdigit() else usage.ru_maxrss  # no /proc: ru_maxrss
    result: dict[str, Any] = {
        "exit_code": proc.returncode,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(peak_kib / 1024, 1),
    }
    try:
        result["summary"] = json.loads(stdout)
    except ValueError:
        result["stdout_tail"] = stdout[-2000:]
    if proc.returncode != 0:
        result["stderr_tail"] = stderr[-2000:]
    return result


@click.command("check")
@click.option(
    "--predictions",
    type=click.IntRange(1000, 100_000_000),
    default=1_000_000,
    show_default=True,
    help="Predictions in the synthetic history.",
)
@_with_build_options
@click.option(
    "--no-build", is_flag=True, help="Time the checks on the data already there (ending today)."
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def bench_check(
    app: AppContext, predictions: int, scanners: int, sites: int, days: int,
    model_name: str | None, no_build: bool, as_json: bool,
) -> None:  # fmt: skip
    """COPY a synthetic history, then time `surveillance check`: first run and next day's.

    Goals (issue 11): first full check < 60 s wall, the next day's run < 5 s,
    peak RSS < 500 MB, at 1M predictions over 300 scanners.
    """
    require_postgres(app, "bench check")
    store = app.store()
    model = registered_model(store, model_name)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    built = None if no_build else _build(store, model, predictions, scanners, sites, days, today)
    store.close()
    base = ["--db-url", app.settings.service.db_url]
    if app.config_path is not None:
        base += ["--config", str(app.config_path)]
    env = dict(os.environ)
    runs = {}
    for name, as_of in (
        ("first", today - timedelta(days=1)),
        ("next_day", today),
        ("same_day_again", today),
    ):
        argv = [*base, "check", "--model", model.name, "--as-of", f"{as_of:%Y-%m-%dT%H:%M:%S}"]
        runs[name] = {"as_of": as_of.isoformat(), **_timed_child([*argv, "--json"], env)}
    first, nxt = runs["first"], runs["next_day"]
    figures = {
        "built": built,
        "model": model.name,
        "runs": runs,
        # the daemon runs the same jobs in a process that has imported everything once:
        # the check's own seconds, without the CLI's start-up (~1.5 s of imports)
        "job_seconds": {
            name: sum(m.get("seconds", 0.0) for m in run.get("summary") or [])
            for name, run in runs.items()
        },
        "goals": {
            "first_wall_lt_60s": first["wall_seconds"] < 60 and first["exit_code"] == 0,
            "next_day_wall_lt_5s": nxt["wall_seconds"] < 5 and nxt["exit_code"] == 0,
            "peak_rss_lt_500mb": max(r["peak_rss_mb"] for r in runs.values()) < 500,
        },
        "cpu_count": os.cpu_count(),
    }
    if as_json:
        print_json(figures)
    else:
        click.echo(json.dumps(figures, indent=2, default=str))


# ---- ingest (files) ------------------------------------------------------------------------


def _header(i: int, tag: str, scanners: int) -> dict[str, Any]:
    """A DICOM JSON model header shaped like a CT study's (PS3.18 F.2)."""
    d = i % scanners
    vendors = ("SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "Canon Medical Systems")

    def el(vr: str, *values: Any) -> dict[str, Any]:
        return {"vr": vr, "Value": list(values)}

    return {
        "00080020": el("DA", "20260801"),
        "00080050": el("SH", f"A{i:09d}"),
        "00080060": el("CS", "CT"),
        "00080070": el("LO", vendors[d % 4]),
        "00080080": el("LO", f"Bench Hospital {d % 50:02d}"),
        "00081010": el("SH", f"CT{d:04d}"),
        "00081090": el("LO", "Model X"),
        "00100020": el("LO", f"P{tag}{i:08d}"),
        "00100040": el("CS", "F" if i % 2 else "M"),
        "00101010": el("AS", f"{20 + i % 70:03d}Y"),
        "00180015": el("CS", "CHEST"),
        "00180050": el("DS", 1.0),
        "00180060": el("DS", 120),
        "00181020": el("LO", f"VA{40 + d % 3}"),
        "00181210": el("SH", "B30f"),
        "0020000D": el("UI", f"2.25.{int(tag, 16)}.{i}"),
        "00280030": el("DS", 0.7, 0.7),
    }


def _write_jsonl(path: Path, n: int, tag: str, model: Any, *, headers: bool, scanners: int) -> int:
    finding = sorted(model.findings)[0]
    at = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    lines = 0
    with path.open("w") as out:
        for i in range(n):
            if headers:
                out.write(
                    json.dumps({"kind": "dicom-metadata", **_header(i, tag, scanners)}) + "\n"
                )
                lines += 1
            record = {
                "kind": "prediction",
                "message_id": f"bench-{tag}-{i}",
                "model": model.name,
                "model_version": model.version,
                "study_instance_uid": f"2.25.{int(tag, 16)}.{i}",
                "outputs": {finding: round((i * 7919 % 1000) / 1000, 3)},
                "predicted_at": at,
            }
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            lines += 1
    return lines


def _cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def _intake_only_seconds(ingestor: Any, path: Path) -> float:
    """Seconds to read, parse, validate and pseudonymise ``path`` without writing it:
    the intake's own share of ``ingest_jsonl`` (the rest is the database)."""
    from connectors.records import parse_jsonl_line, read_jsonl_records
    from surveillance.intake.ingest import MAX_LINE_BYTES, collector_spared
    from surveillance.store import IngestBatch

    known, bounds = ingestor.known_findings, ingestor.bounds
    started = time.perf_counter()
    with collector_spared():
        batch = IngestBatch()
        for raw in read_jsonl_records(path, max_bytes=MAX_LINE_BYTES):
            event = parse_jsonl_line(raw.data, raw.position, bounds=bounds, known_findings=known)
            ingestor.add(event, batch)
            if len(batch) >= ingestor.batch_size:
                batch = IngestBatch()
    return time.perf_counter() - started


@click.command("ingest-jsonl")
@click.option(
    "--messages",
    type=click.IntRange(1000, 10_000_000),
    default=100_000,
    show_default=True,
    help="Predictions (and, for the header run, studies) per run.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(100, 100_000),
    default=5000,
    show_default=True,
    help="Records per transaction.",
)
@click.option("--model", "model_name", default=None, help="Registered model (default: first).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def bench_ingest_jsonl(
    app: AppContext, messages: int, batch_size: int, model_name: str | None, as_json: bool
) -> None:  # fmt: skip
    """JSONL intake (predictions only; with DICOM-JSON headers) and the database write
    path beside a plain COPY of the same rows into an unindexed table, in one run.

    Goals (issue 11): >= 50k predictions/s; >= 20k studies/s with headers;
    write path >= 0.5x the plain COPY.
    """
    from surveillance.intake.ingest import Ingestor
    from surveillance.store import IngestBatch
    from surveillance.store.domain import PredictionRecord

    require_postgres(app, "bench ingest-jsonl")
    store = app.store()
    model = registered_model(store, model_name)
    ingestor = Ingestor(store, app.pseudonymizer(), batch_size=batch_size)
    figures: dict[str, Any] = {"messages": messages, "batch_size": batch_size}
    tags = []
    with tempfile.TemporaryDirectory(prefix="surveillance-bench-") as tmp:
        for name, headers in (("predictions_only", False), ("with_dicom_headers", True)):
            tag = uuid.uuid4().hex[:12]
            tags.append(tag)
            path = Path(tmp) / f"{name}.jsonl"
            lines = _write_jsonl(path, messages, tag, model, headers=headers, scanners=300)
            intake_s = _intake_only_seconds(ingestor, path)
            cpu0, wall0 = _cpu(), time.perf_counter()
            counts = ingestor.ingest_jsonl(path)  # what `surveillance ingest FILE` runs
            wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
            figures[name] = {
                "lines": lines,
                "predictions_new": counts.predictions_new,
                "headers": counts.metadata,
                "dead_letters": counts.dead_letters,
                "wall_seconds": round(wall, 2),
                "cpu_seconds_this_process": round(cpu, 2),
                "per_s": round(messages / wall),
                "intake_only_seconds": round(intake_s, 2),
                "intake_only_per_s": round(messages / intake_s),
                "unit": "studies" if headers else "predictions",
                "goal_per_s": 20_000 if headers else 50_000,
                "met": messages / wall >= (20_000 if headers else 50_000),
            }
        # The database write path alone: prebuilt records through write_batch.
        tag = uuid.uuid4().hex[:12]
        tags.append(tag)
        finding = sorted(model.findings)[0]
        at = datetime.now(UTC) - timedelta(hours=1)
        records = [
            PredictionRecord(
                message_id=f"bench-{tag}-{i}",
                model_id=model.id,
                model_version=model.version,
                study_uid_pseudonym=f"{int(tag, 16):064x}"[-40:] + f"{i:024x}",
                finding=finding,
                score=(i * 7919 % 1000) / 1000,
                predicted_at=at,
            )
            for i in range(messages)
        ]
        started = time.perf_counter()
        for start in range(0, messages, batch_size):
            batch = IngestBatch()
            batch.predictions.extend(records[start : start + batch_size])
            store.events.write_batch(batch)
        write_s = time.perf_counter() - started
        rows, _ = store.bench.count_predictions(f"bench-{tag}-")
        copied, copy_s = store.bench.time_plain_copy(f"bench-{tag}-", f"bench_copy_{tag}")
        indexed_s = store.bench.copy_indexed_seconds(
            store.bench.stored_rows(f"bench-{tag}-"), f"bench_copyix_{tag}"
        )
        figures["write_path"] = {
            "rows": rows,
            "seconds": round(write_s, 3),
            "rows_per_s": round(rows / write_s),
            "includes": "study skeletons (COPY -> temp -> INSERT ON CONFLICT), prediction_key "
            "and prediction COPY in a savepoint, commit per batch",
            "plain_copy_rows": copied,
            "plain_copy_seconds": round(copy_s, 3),
            "plain_copy_rows_per_s": round(copied / copy_s),
            "ratio_to_plain_copy": round((rows / write_s) / (copied / copy_s), 3),
            "copy_into_indexed_prediction_copy_rows_per_s": round(copied / indexed_s),
            "ratio_to_indexed_copy": round((rows / write_s) / (copied / indexed_s), 3),
            "goal_ratio": 0.5,
            "met": (rows / write_s) / (copied / copy_s) >= 0.5,
        }
    for tag in tags:
        store.bench.delete_bench_rows(f"bench-{tag}-")
    figures["cpu_count"] = os.cpu_count()
    figures["database"] = store.engine.url.render_as_string(hide_password=True)
    if as_json:
        print_json(figures)
    else:
        click.echo(json.dumps(figures, indent=2, default=str))


# ---- ingest (Kafka) ----------------------------------------------------------------------


@click.command("ingest")
@click.option(
    "--messages",
    type=click.IntRange(1, 10_000_000),
    default=100_000,
    show_default=True,
    help="Prediction messages to produce and ingest.",
)
@click.option(
    "--partitions",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Partitions of the benchmark's own topic.",
)
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Registered model the messages name (default: the first one).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=900.0,
    show_default=True,
    help="Give up after this many seconds of consuming.",
)
@click.option("--keep", is_flag=True, help="Keep the rows, offsets and topic afterwards.")
@click.option("--json", "as_json", is_flag=True)
@with_consumer_options
@pass_app
def bench_ingest(
    app: AppContext, messages: int, partitions: int, model_name: str | None,
    timeout: float, keep: bool, as_json: bool, **options: Any,
) -> None:  # fmt: skip
    """Kafka -> PostgreSQL predictions end to end, beside a plain COPY of the same rows.

    Produces MESSAGES predictions to a new topic, consumes them with the
    real intake (validation, pseudonyms, idempotent writes, offsets) and
    times it beside a bare kafka-python consumer reading the same topic
    (no decoding, no database) and the same consumer with the intake's
    parsing but no database, in the same run; then COPYs the same rows into
    an unindexed scratch table (the database yardstick). Writes into
    the database it is pointed at and deletes its rows afterwards (unless
    --keep): use a scratch database. Needs a broker and PostgreSQL.

    Goal (issue 11): end to end >= 0.8x the bare consumer.
    """
    figures = _bench_ingest(app, messages, partitions, model_name, timeout, keep, options)
    if as_json:
        print_json(figures)
    else:
        click.echo(json.dumps(figures, indent=2))


def _read_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    messages: int,
    timeout: float,
    max_records: int,
    check_crcs: bool,
    handle: Any = None,
) -> tuple[int, float]:
    """A bare kafka-python consumer reading ``topic`` from the start: (records, seconds).

    The yardstick for the intake's Kafka path: same client library, same fetch
    sizes and poll size as :class:`connectors.kafka.KafkaSource`, no group,
    no database; ``handle(topic_partition, messages)``, when given, runs on
    each fetched list. Timed from the first record to the last.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_records,
        fetch_max_bytes=32 << 20,
        max_partition_fetch_bytes=4 << 20,
        check_crcs=check_crcs,
    )
    try:
        assigned = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        count, first, last = 0, 0.0, 0.0
        deadline = time.monotonic() + timeout
        while count < messages and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=max_records).items():
                if records and not first:
                    first = time.perf_counter()
                if handle is not None:
                    handle(tp, records)
                count += len(records)
            last = time.perf_counter()
    finally:
        consumer.close()
    return count, (last - first) if first else 0.0


def _parse_only(ingestor: Any) -> Any:
    """A :func:`_read_topic` handler: what a writer lane does before the database
    (records, parsing, validation, pseudonyms into a batch), then drops the batch."""
    from connectors.records import parse_json
    from surveillance.core.events import RawRecord, SourcePosition
    from surveillance.store import IngestBatch

    known, bounds = ingestor.known_findings, ingestor.bounds

    def handle(tp: Any, messages: list[Any]) -> None:
        batch = IngestBatch()
        for m in messages:
            raw = RawRecord(
                m.value, SourcePosition("kafka", tp.topic, tp.partition, m.offset), "prediction"
            )
            event = parse_json(
                raw.data, "prediction", raw.position, bounds=bounds, known_findings=known
            )
            ingestor.add(event, batch)

    return handle


def _bench_ingest(
    app: AppContext,
    messages: int,
    partitions: int,
    model_name: str | None,
    timeout: float,
    keep: bool,
    options: dict[str, Any],
) -> dict[str, Any]:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    from surveillance.intake.ingest import collector_spared

    require_postgres(app, "bench ingest (it compares with PostgreSQL COPY)")
    bootstrap = kafka_bootstrap(app, options.get("bootstrap"))
    store = app.store()
    model = registered_model(store, model_name)
    run = uuid.uuid4().hex[:12]
    topic = f"surveillance-bench-{run}"
    group_id = f"surveillance-bench-{run}"
    prefix = f"bench-{run}-"
    finding = sorted(model.findings)[0]
    predicted_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    payloads = [
        json.dumps(
            {
                "message_id": f"{prefix}{i}",
                "model": model.name,
                "model_version": model.version,
                "study_instance_uid": f"2.25.{int(run, 16)}.{i}",
                "outputs": {finding: round((i * 7919 % 1000) / 1000, 3)},
                "predicted_at": predicted_at,
            },
            separators=(",", ":"),
        ).encode()
        for i in range(messages)
    ]
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
        try:
            admin.create_topics([NewTopic(topic, partitions, 1)])
        finally:
            admin.close()
        producer = KafkaProducer(
            bootstrap_servers=bootstrap.split(","),
            linger_ms=20,
            batch_size=1 << 20,
            max_request_size=8 << 20,
            acks=1,
        )
    except KafkaError as exc:
        raise click.ClickException(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        started = time.perf_counter()
        for i, payload in enumerate(payloads):
            producer.send(topic, payload, partition=i % partitions)
        producer.flush()
        produce_s = time.perf_counter() - started
    finally:
        producer.close()

    read = (bootstrap, topic, partitions, messages, timeout)
    # the yardsticks poll as much per call as the service does (writers x batch size)
    batch, crcs = options["batch_size"] * options["writers"], options["check_crcs"]
    bare_count, bare_s = _read_topic(*read, batch, crcs)
    options = {**options, "group_id": group_id, "bootstrap": bootstrap}
    service = kafka_service(app, store, topics={topic: "prediction"}, **options)
    with collector_spared():
        parsed_count, parsed_s = _read_topic(*read, batch, crcs, _parse_only(service.ingestor))
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.daemon = True
    timer.start()
    consume_started = time.monotonic()
    service.run(stop, until_caught_up=True)
    done = time.monotonic()
    timer.cancel()
    health = service.health()
    rows, distinct = store.bench.count_predictions(prefix)
    first = service.first_record_at or done
    ingest_s = done - first
    copied, copy_s = store.bench.time_plain_copy(prefix, f"surveillance_bench_copy_{run}")
    if not keep:
        store.bench.delete_bench_rows(prefix)
        store.events.forget_offsets(group_id)
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
            try:
                admin.delete_topics([topic])
            finally:
                admin.close()
        except KafkaError:
            pass  # a broker without topic deletion keeps a small bench topic
    ingest_rate = rows / ingest_s if ingest_s > 0 else None
    copy_rate = copy_s and copied / copy_s
    bare_rate = bare_count / bare_s if bare_s > 0 else None
    parsed_rate = parsed_count / parsed_s if parsed_s > 0 else None
    return {
        "messages": messages,
        "partitions": partitions,
        "message_bytes": len(payloads[0]),
        "rows_stored": rows,
        "duplicates": rows - distinct,
        "dead_letters": health.counts.dead_letters,
        "complete": rows == messages,
        "produce_seconds": round(produce_s, 3),
        "produce_msgs_per_s": round(messages / produce_s),
        "group_join_seconds": round(first - consume_started, 3),
        "ingest_seconds": round(ingest_s, 3),
        "ingest_msgs_per_s": None if ingest_rate is None else round(ingest_rate),
        "ingest_msgs_per_s_with_join": round(rows / (done - consume_started)),
        "bare_consumer_msgs": bare_count,
        "bare_consumer_seconds": round(bare_s, 3),
        "bare_consumer_msgs_per_s": None if bare_rate is None else round(bare_rate),
        "consume_and_parse_msgs": parsed_count,
        "consume_and_parse_seconds": round(parsed_s, 3),
        "consume_and_parse_msgs_per_s": None if parsed_rate is None else round(parsed_rate),
        "ingest_to_bare_consumer_ratio": (
            None if not ingest_rate or not bare_rate else round(ingest_rate / bare_rate, 3)
        ),
        "consume_and_parse_to_bare_consumer_ratio": (
            None if not parsed_rate or not bare_rate else round(parsed_rate / bare_rate, 3)
        ),
        "goal_ingest_to_bare_consumer_ratio": 0.8,
        "copy_rows": copied,
        "copy_seconds": round(copy_s, 3),
        "copy_rows_per_s": None if not copy_rate else round(copy_rate),
        "ingest_to_copy_ratio": (
            None if not ingest_rate or not copy_rate else round(ingest_rate / copy_rate, 3)
        ),
        "writers": options["writers"],
        "batch_size": options["batch_size"],
        "check_crcs": options["check_crcs"],
        "cpu_count": os.cpu_count(),
        "database": store.engine.url.render_as_string(hide_password=True),
        "kept": keep,
    }


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    bench = group("bench", "Benchmarks that print JSON figures for sizing a site.")
    bench.add_command(bench_panels)
    bench.add_command(bench_check)
    bench.add_command(bench_ingest_jsonl)
    bench.add_command(bench_ingest)


__all__ = ["panel_figures", "register"]
