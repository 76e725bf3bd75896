"""CLI commands for the Kafka consumer, dead-letter replay, ingest benchmark.

* ``surveillance kafka consume [--once] [--max-seconds S]``: run the consumer
  alone (SIGTERM/SIGINT stop it cleanly; a kill -9 loses nothing: offsets are
  committed with the rows).
* ``surveillance kafka lag [--json]``: stored offset, log end and lag per partition.
* ``surveillance deadletters replay [ID...] [--all]``: re-validate and write fixed records.
* ``surveillance bench ingest [--messages N] [--json]``: Kafka -> PostgreSQL figures.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import AppContext, group, pass_app, print_json
from surveillance.core.errors import StoreError, UsageError

_consumer_options = [
    click.option("--bootstrap", default=None, help="Kafka bootstrap servers (host:port,...)."),
    click.option("--group", "group_id", default=None, help="Consumer group (default [kafka])."),
    click.option(
        "--writers", type=click.IntRange(1, 16), default=2, show_default=True,
        help="Writer threads (each owns a share of the partitions).",
    ),
    click.option(
        "--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True,
        help="Records per poll and per transaction.",
    ),
    click.option(
        "--session-timeout-ms", type=click.IntRange(1000, 3_600_000), default=10000,
        show_default=True, help="Consumer-group session timeout.",
    ),
    click.option(
        "--heartbeat-ms", type=click.IntRange(100, 600_000), default=3000, show_default=True,
        help="Consumer-group heartbeat interval (below a third of the session timeout).",
    ),
    click.option(
        "--check-crcs/--no-check-crcs", default=False, show_default=True,
        help="Verify record CRC32C (slow in pure Python; install 'crc32c' first).",
    ),
]  # fmt: skip


def _with_consumer_options(func: Any) -> Any:
    for option in reversed(_consumer_options):
        func = option(func)
    return func


def _bootstrap(app: AppContext, bootstrap: str | None) -> str:
    value = bootstrap or app.settings.kafka.bootstrap
    if not value:
        raise UsageError(
            "no Kafka bootstrap servers: pass --bootstrap host:port or set "
            "SURVEILLANCE_KAFKA_BOOTSTRAP"
        )
    return value


def _service(
    app: AppContext,
    store: Any,
    *,
    bootstrap: str | None,
    group_id: str | None,
    writers: int,
    batch_size: int,
    session_timeout_ms: int,
    heartbeat_ms: int,
    check_crcs: bool,
    topics: dict[str, str] | None = None,
) -> Any:
    from surveillance.intake.ingest import Ingestor
    from surveillance.intake.kafka import KafkaIngestService

    if heartbeat_ms * 3 > session_timeout_ms:
        raise UsageError(
            f"--heartbeat-ms {heartbeat_ms} must be at most a third of "
            f"--session-timeout-ms {session_timeout_ms}"
        )
    ingestor = Ingestor.for_settings(store, app.pseudonymizer(), app.settings)
    ingestor.batch_size = batch_size
    return KafkaIngestService(
        store,
        ingestor,
        app.settings,
        topics=topics,
        group_id=group_id,
        bootstrap=_bootstrap(app, bootstrap),
        writers=writers,
        max_records=batch_size,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_ms,
        check_crcs=check_crcs,
    )


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _health_line(health: Any) -> str:
    lag = health.total_lag
    c = health.counts
    return (
        f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {health.state}: "
        f"{health.records_written} records written ({c.predictions_new} prediction rows new, "
        f"{c.metadata} headers, {c.diagnoses_new} diagnoses new, {c.dead_letters} dead letters); "
        f"{len(health.partitions)} partition(s), lag {'?' if lag is None else lag}"
        + (f"; last error: {health.last_error}" if health.consecutive_failures else "")
    )


@click.command("consume")
@click.option("--once", is_flag=True, help="Exit once every partition is caught up.")
@click.option(
    "--max-seconds",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop after this long (with --once: exit 1 if not caught up by then).",
)
@click.option(
    "--report-every",
    type=click.FloatRange(1),
    default=30.0,
    show_default=True,
    help="Seconds between status lines on stderr.",
)
@_with_consumer_options
@pass_app
def kafka_consume(
    app: AppContext, once: bool, max_seconds: float | None, report_every: float, **options: Any
) -> None:  # fmt: skip
    """Consume the three topics into the database (the consumer alone, no scheduler)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from surveillance.core.phi_logging import install_phi_filter

    install_phi_filter()  # again, for the handler just added
    service = _service(app, app.store(), **options)
    stop = threading.Event()
    _stop_on_signals(stop)
    if max_seconds is not None:
        timer = threading.Timer(max_seconds, stop.set)
        timer.daemon = True
        timer.start()

    def report() -> None:
        while not stop.wait(report_every):
            click.echo(_health_line(service.health()), err=True)

    threading.Thread(target=report, name="kafka-report", daemon=True).start()
    click.echo(
        f"consuming {', '.join(sorted(service.topics))} as group {service.group!r}", err=True
    )
    service.run(stop, until_caught_up=once)
    stopped_early = stop.is_set()
    stop.set()
    health = service.health()
    click.echo(_health_line(health))
    if service.halted is not None:  # [kafka] on_offset_out_of_range = "stop"
        raise StoreError(
            f"consumer stopped: {service.halted}; an intake incident was raised. Fix the "
            "broker or the stored offsets, or set [kafka] on_offset_out_of_range = "
            '"earliest" to re-read from the log start'
        )
    if once and stopped_early:
        raise click.ClickException("stopped before every partition was caught up")


@click.command("lag")
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers.")
@click.option("--group", "group_id", default=None, help="Consumer group (default [kafka]).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def kafka_lag(app: AppContext, bootstrap: str | None, group_id: str | None, as_json: bool) -> None:
    """Per partition: offset stored in the database, log end, lag (records not yet stored).

    Covers the configured topics and every topic the group has offsets for.
    """
    from connectors.kafka import KafkaSourceError, end_offsets
    from surveillance.intake.kafka import topic_kinds

    group_name = group_id or app.settings.kafka.group_id
    stored = app.store().events.offsets(group_name)
    try:
        topics = set(topic_kinds(app.settings)) | {t for t, _ in stored}
        ends = end_offsets(_bootstrap(app, bootstrap), sorted(topics))
    except KafkaSourceError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = [
        {
            "topic": t,
            "partition": p,
            "stored": stored.get((t, p)),
            "end": ends.get((t, p)),
            "lag": None if (t, p) not in ends else ends[(t, p)] - stored.get((t, p), 0),
            # a stored offset beyond the log end: the log was lost or the topic recreated
            "out_of_range": (t, p) in ends and stored.get((t, p), 0) > ends[(t, p)],
        }
        for t, p in sorted(set(stored) | set(ends))
    ]
    if as_json:
        print_json({"group": group_name, "partitions": rows})
        return
    table = Table("topic", "partition", "stored offset", "log end", "lag", title=group_name)
    for r in rows:
        table.add_row(
            str(r["topic"]),
            str(r["partition"]),
            "-" if r["stored"] is None else str(r["stored"]),
            "-" if r["end"] is None else str(r["end"]),
            "-"
            if r["lag"] is None
            else f"{r['lag']} OUT OF RANGE (see [kafka] on_offset_out_of_range)"
            if r["out_of_range"]
            else str(r["lag"]),
        )
    Console(width=160).print(table)


@click.command("replay")
@click.argument("ids", nargs=-1, type=click.IntRange(1))
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter not replayed yet.")
@click.option("--by", "actor", default="cli", show_default=True, help="Who replays.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def deadletters_replay(
    app: AppContext, ids: tuple[int, ...], replay_all: bool, actor: str, as_json: bool
) -> None:
    """Re-validate dead letters and write the ones that now pass (e.g. after
    registering a missing model). Exit 1 if any still fails."""
    from surveillance.intake.ingest import Ingestor
    from surveillance.intake.kafka import replay

    if bool(ids) == replay_all:
        raise UsageError("name dead-letter IDs or pass --all (not both)")
    store = app.store()
    entries = (
        store.events.pending_dead_letters() if replay_all else store.events.dead_letters_by_id(ids)
    )
    outcomes = replay(store, Ingestor(store, app.pseudonymizer()), entries, actor=actor)
    failed = [o for o in outcomes if not o.replayed]
    if as_json:
        print_json(outcomes)
    else:
        for o in outcomes:
            click.echo(f"dead letter {o.id}: {o.detail}")
        click.echo(f"{len(outcomes) - len(failed)} of {len(outcomes)} replayed")
    if failed:
        sys.exit(1)


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
@_with_consumer_options
@pass_app
def bench_ingest(
    app: AppContext, messages: int, partitions: int, model_name: str | None,
    timeout: float, keep: bool, as_json: bool, **options: Any,
) -> None:  # fmt: skip
    """Kafka -> PostgreSQL predictions end to end, beside a plain COPY of the same rows.

    Produces MESSAGES predictions to a new topic, consumes them with the
    real intake (validation, pseudonyms, idempotent writes, offsets) and
    times it beside a bare kafka-python consumer reading the same topic
    (no decoding, no database) in the same run; then COPYs the same rows into
    an unindexed scratch table (the database yardstick). Writes into
    the database it is pointed at and deletes its rows afterwards (unless
    --keep): use a scratch database. Needs a broker and PostgreSQL.
    """
    figures = _bench_ingest(app, messages, partitions, model_name, timeout, keep, options)
    if as_json:
        print_json(figures)
    else:
        click.echo(json.dumps(figures, indent=2))


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    kafka = group("kafka", "The Kafka intake (predictions, DICOM headers, diagnoses).")
    deadletters = group("deadletters", "Records that were rejected, with the reason.")
    bench = group("bench", "Benchmarks that print JSON figures for sizing a site.")
    kafka.add_command(kafka_consume)
    kafka.add_command(kafka_lag)
    deadletters.add_command(deadletters_replay)
    bench.add_command(bench_ingest)


def _bare_consume(
    bootstrap: str,
    topic: str,
    partitions: int,
    messages: int,
    timeout: float,
    max_records: int,
    check_crcs: bool,
) -> tuple[int, float]:
    """A bare kafka-python consumer reading ``topic`` from the start: (records, seconds).

    The yardstick for the intake's Kafka path: same client library, same fetch
    sizes and record batch as :class:`connectors.kafka.KafkaSource`, no group,
    no decoding, no database. Timed from the first record to the last.
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
            for records in consumer.poll(timeout_ms=500, max_records=max_records).values():
                if records and not first:
                    first = time.perf_counter()
                count += len(records)
            last = time.perf_counter()
    finally:
        consumer.close()
    return count, (last - first) if first else 0.0


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

    if not app.settings.service.db_url.startswith(("postgresql", "postgres")):
        raise UsageError(
            "bench ingest compares with PostgreSQL COPY: point --db-url (or "
            "SURVEILLANCE_DB_URL) at a scratch PostgreSQL database"
        )
    bootstrap = _bootstrap(app, options.get("bootstrap"))
    store = app.store()
    models = store.registry.models()
    if not models:
        raise UsageError("no model registered: run 'surveillance models load FILE' first")
    model = next((m for m in models if m.name == model_name), None) if model_name else models[0]
    if model is None:
        raise UsageError(
            f"no model {model_name!r} registered ({', '.join(m.name for m in models)})"
        )
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

    bare_count, bare_s = _bare_consume(
        bootstrap,
        topic,
        partitions,
        messages,
        timeout,
        options["batch_size"],
        options["check_crcs"],
    )
    options = {**options, "group_id": group_id, "bootstrap": bootstrap}
    service = _service(app, store, topics={topic: "prediction"}, **options)
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
    copy_rate = copied / copy_s if copy_s > 0 else None
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
        "bare_consumer_msgs_per_s": round(bare_count / bare_s) if bare_s > 0 else None,
        "ingest_to_bare_consumer_ratio": (
            None
            if not ingest_rate or bare_s <= 0
            else round(ingest_rate / (bare_count / bare_s), 3)
        ),
        "goal_ingest_to_bare_consumer_ratio": 0.8,
        "copy_rows": copied,
        "copy_seconds": round(copy_s, 3),
        "copy_rows_per_s": None if copy_rate is None else round(copy_rate),
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
