"""CLI commands for the Kafka consumer and dead-letter replay.

* ``surveillance kafka consume [--once] [--max-seconds S]``: run the consumer
  alone (SIGTERM/SIGINT stop it cleanly; a kill -9 loses nothing: offsets are
  committed with the rows).
* ``surveillance kafka lag [--json]``: stored offset, log end and lag per partition.
* ``surveillance deadletters replay [ID...] [--all]``: re-validate and write fixed records.

The Kafka ingest benchmark (``surveillance bench ingest``) lives with the other
benchmarks in :mod:`surveillance.cli.bench`; the consumer options and service
they share are in :mod:`surveillance.cli.app`.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import (
    AppContext,
    group,
    kafka_bootstrap,
    kafka_service,
    pass_app,
    print_json,
    with_consumer_options,
)
from surveillance.core.errors import StoreError, UsageError


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
@with_consumer_options
@pass_app
def kafka_consume(
    app: AppContext, once: bool, max_seconds: float | None, report_every: float, **options: Any
) -> None:  # fmt: skip
    """Consume the three topics into the database (the consumer alone, no scheduler)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from surveillance.core.phi_logging import install_phi_filter

    install_phi_filter()  # again, for the handler just added
    service = kafka_service(app, app.store(), **options)
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
        ends = end_offsets(kafka_bootstrap(app, bootstrap), sorted(topics))
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


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    kafka = group("kafka", "The Kafka intake (predictions, DICOM headers, diagnoses).")
    deadletters = group("deadletters", "Records that were rejected, with the reason.")
    kafka.add_command(kafka_consume)
    kafka.add_command(kafka_lag)
    deadletters.add_command(deadletters_replay)
