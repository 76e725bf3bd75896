"""Administration: the demo, the schema, models and baselines, keys, the audit log, the daemon."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import AppContext, _jsonable, pass_app, print_json
from surveillance.core.config import read_toml
from surveillance.core.errors import UsageError
from surveillance.outputs.views import when
from surveillance.store.types import utcnow


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Folder for the SQLite database, events and key.",
)
@click.option(
    "--days",
    type=click.IntRange(60, 730),
    default=120,
    show_default=True,
    help="Days of deployment to simulate.",
)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(out: Path, days: int, seed: int) -> None:
    """Run the whole loop on SQLite and a synthetic multi-site feed."""
    from surveillance.demo import run_demo

    console = Console()
    if not console.is_terminal:  # piped or CI: don't squeeze the tables into 80 columns
        console = Console(width=150)
    run_demo(out=out, days=days, seed=seed, console=console)


@click.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@pass_app
def db_upgrade(app: AppContext) -> None:
    """Apply migrations up to head on the configured database.

    On PostgreSQL it then creates the monthly prediction and embedding partitions up to three
    months ahead (the retention job keeps them so; see deploy/OPERATIONS.md).
    """
    from surveillance.store.migrations import current_revision, upgrade
    from surveillance.store.partitions import MONTHS_AHEAD, PARTITIONED, add_months
    from surveillance.store.types import utcnow

    store = app.store(require_current_schema=False)
    before = current_revision(store.engine)
    after = upgrade(store.engine)
    url = store.engine.url.render_as_string(hide_password=True)
    if before == after:
        click.echo(f"{url}: already at {after}")
    else:
        click.echo(f"{url}: upgraded {before or 'empty database'} -> {after}")
    now = utcnow()
    for table in PARTITIONED:
        created = store.partitions.ensure(add_months(now, MONTHS_AHEAD), since=now, table=table)
        if created:
            click.echo(f"{url}: {created} monthly {table} partition(s) created ahead")
    store.close()


@click.group()
def models() -> None:
    """Registered models and clearance baselines."""


@models.command("load")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--by", "actor", default="cli", show_default=True, help="Who is registering.")
@pass_app
def models_load(app: AppContext, file: Path, actor: str) -> None:
    """Register the models and baselines of a TOML file (the [[models]] tables)."""
    from surveillance.core.config import parse_settings

    loaded = parse_settings({"models": read_toml(file).get("models", [])}, str(file))
    if not loaded.models:
        raise UsageError(f"{file} has no [[models]] table to load")
    store = app.store()
    for info in store.registry.register_models(loaded.models, actor=actor):
        click.echo(
            f"registered {info.name} {info.version}: findings "
            f"{', '.join(info.findings)}; {len(info.baselines)} baseline figure(s)"
        )


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def models_list(app: AppContext, as_json: bool) -> None:
    """List registered models with their baselines."""
    items = app.store().registry.models()
    if as_json:
        print_json(items)
        return
    table = Table(
        "model",
        "version",
        "finding",
        "metric",
        "stratum",
        "cleared (95% CI)",
        "alert limit",
        "source",
    )
    for m in items:
        for b in m.baselines:
            ci = (
                f" ({b.ci_lower:.3f}-{b.ci_upper:.3f})"
                if b.ci_lower is not None and b.ci_upper is not None
                else ""
            )
            table.add_row(
                m.name,
                m.version,
                b.finding,
                b.metric,
                b.stratum,
                f"{b.value:.3f}{ci}",
                f"{b.alert_limit:.3f}",
                b.source_document,
            )
    Console().print(table)


@click.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@click.option(
    "--expect-head",
    metavar="HASH",
    default=None,
    help="A head hash recorded earlier outside the database (an alert, an export): it must "
    "still be in the chain.",
)
@click.option(
    "--expect-count",
    metavar="N",
    type=click.IntRange(0),
    default=None,
    help="The event count recorded with that head: the chain must have at least N events "
    "and the head must be event N.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def audit_verify(
    app: AppContext, expect_head: str | None, expect_count: int | None, as_json: bool
) -> None:
    """Check that no audit event was edited or deleted (exit 1 if one was).

    Events are keyed with the audit key ([service] audit_key_file, else derived
    from the pseudonym key), so a chain recomputed without the key fails; an
    anchor recorded outside the database (--expect-head, --expect-count) also
    catches deleting the newest events.
    """
    if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
        raise UsageError(f"--expect-head must be 64 lowercase hex digits, got {expect_head!r}")
    store = app.store()
    try:
        report = store.audit.verify(expect_head=expect_head, expect_count=expect_count)
        keyed = store.audit.key is not None
    finally:
        store.close()
    if report.unverified_events:
        report = dataclasses.replace(
            report,
            problems=(
                *report.problems,
                f"{report.unverified_events} keyed event(s) cannot be verified without the "
                "audit key: set [service] audit_key_file (or the pseudonym key it is derived "
                "from) as the writers had it",
            ),
        )
    if as_json:
        print_json({**_jsonable(report), "ok": report.ok, "keyed": keyed})
    elif report.ok:
        click.echo(
            f"audit chain intact: {report.events} events, head {report.head_hash}"
            + ("" if keyed else " (no audit key configured: unkeyed SHA-256 only)")
            + (
                f"; {report.unkeyed_events} event(s) from before the audit key are unkeyed"
                if keyed and report.unkeyed_events
                else ""
            )
        )
    else:
        click.echo(f"audit chain BROKEN ({len(report.problems)} problem(s)):", err=True)
        for problem in report.problems:
            click.echo(f"  - {problem}", err=True)
    if not report.ok:
        sys.exit(1)


@click.group()
def keys() -> None:
    """The pseudonym (HMAC) key and the export signing key pair."""


@keys.command("generate")
@click.argument("path", type=click.Path(path_type=Path))
def keys_generate(path: Path) -> None:
    """Write a new random pseudonym key to PATH (mode 0600; refuses to overwrite)."""
    from surveillance.intake.pseudonym import generate_key_file

    generate_key_file(path)
    click.echo(
        f"wrote {path}; set SURVEILLANCE_PSEUDONYM_KEY_FILE={path} and back it up "
        "separately from the database"
    )


@keys.command("signing")
@click.argument("path", type=click.Path(path_type=Path))
def keys_signing(path: Path) -> None:
    """Write an Ed25519 key pair for signing Article 72 exports: PATH (private, 0600)
    and PATH.pub (public, to hand to whoever verifies); refuses to overwrite."""
    from surveillance.outputs.exports.signing import generate_signing_key

    pair = generate_signing_key(path)
    click.echo(f"wrote {pair.private} (private key, mode 0600: keep it in the QMS, never share)")
    click.echo(f"wrote {pair.public} (public key: give it to whoever verifies the exports)")
    click.echo(f"key id {pair.key_id}")
    click.echo(
        f"sign: surveillance export article72 ... --sign {pair.private}; verify: "
        f"surveillance export verify DIR --public-key {pair.public}"
    )


@click.command()
@click.option("--once", is_flag=True, help="Run the checks and alerts once now and exit.")
@pass_app
def run(app: AppContext, once: bool) -> None:
    """The daemon: refuses an out-of-date schema, then runs the scheduled jobs.

    Across replicas exactly one runs the scheduler (PostgreSQL advisory lock);
    the others wait as standbys and take over when it dies.
    """
    import logging

    from surveillance.scheduling.daemon import Daemon
    from surveillance.scheduling.jobs import ONCE_JOBS, JobContext, build_jobs
    from surveillance.scheduling.scheduler import SchedulerService, run_once

    store = app.store()  # raises SchemaOutOfDateError with the upgrade command
    settings = app.settings
    jobs = build_jobs(settings)
    context = JobContext(settings=settings, store=store)
    url = store.engine.url.render_as_string(hide_password=True)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # our ledger logs each run
        from surveillance.core.phi_logging import install_phi_filter

        install_phi_filter()  # again, for the handlers just added: UIDs never reach the log
    if once:
        ran = run_once(store, [j for j in jobs if j.id in ONCE_JOBS], context, now=utcnow())
        click.echo(
            f"{when(utcnow())} ran {', '.join(ran) or 'nothing (already ran this second)'} on "
            f"{url}; {len(store.incidents.find(status='open'))} open incident(s)"
        )
        store.close()
        return
    from surveillance.scheduling.services import daemon_services

    services = [
        *daemon_services(store, settings, app.pseudonymizer()),
        SchedulerService(store, jobs, context),
    ]
    click.echo(f"surveillance daemon on {url}: " + "; ".join(f"{j.id} {j.schedule}" for j in jobs))
    reason = Daemon(services).run()
    click.echo(f"surveillance daemon stopped ({reason})")
    store.close()


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    cli.add_command(demo)
    cli.add_command(db)
    cli.add_command(models)
    cli.add_command(audit)
    cli.add_command(keys)
    cli.add_command(run)
