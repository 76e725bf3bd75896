"""The ``surveillance`` command line (DESIGN.md, "CLI").

Exit codes: 0 success, 2 bad input or usage (with a message saying what to fix),
1 runtime failure. Anything that lists takes ``--json``. Errors of the project's
family are printed as one line, never as a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from surveillance.config import Settings, load_settings, read_toml
from surveillance.errors import SurveillanceError, UsageError
from surveillance.store import Store
from surveillance.store.types import utcnow
from surveillance.views import incidents_table, when
from surveillance.vigilance import time_left

err_console = Console(stderr=True)


@dataclasses.dataclass
class AppContext:
    config_path: Path | None
    db_url: str | None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(
                self.config_path, overrides={"service.db_url": self.db_url}
            )
        return self._settings

    def store(self, *, require_current_schema: bool = True) -> Store:
        return Store.open(
            self.settings.service.db_url, require_current_schema=require_current_schema
        )

    def pseudonymizer(self) -> Any:
        from surveillance.pseudonym import load_pseudonymizer

        service = self.settings.service
        return load_pseudonymizer(service.pseudonym_key_file, mode=service.mode)


pass_app = click.make_pass_decorator(AppContext)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(_jsonable(value), indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML configuration file (default: $SURVEILLANCE_CONFIG).",
)
@click.option(
    "--db-url", default=None, help="Database URL (overrides $SURVEILLANCE_DB_URL and the file)."
)
@click.version_option(package_name="surveillance")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, db_url: str | None) -> None:
    """Post-market drift surveillance for deployed medical-imaging AI."""
    ctx.obj = AppContext(config_path=config_path, db_url=db_url)


# ---- demo ----------------------------------------------------------------------


@cli.command()
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


# ---- db --------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@pass_app
def db_upgrade(app: AppContext) -> None:
    """Apply migrations up to head on the configured database."""
    from surveillance.store.migrations import current_revision, upgrade

    store = app.store(require_current_schema=False)
    before = current_revision(store.engine)
    after = upgrade(store.engine)
    url = store.engine.url.render_as_string(hide_password=True)
    if before == after:
        click.echo(f"{url}: already at {after}")
    else:
        click.echo(f"{url}: upgraded {before or 'empty database'} -> {after}")
    store.close()


# ---- models -----------------------------------------------------------------------


@cli.group()
def models() -> None:
    """Registered models and clearance baselines."""


@models.command("load")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--by", "actor", default="cli", show_default=True, help="Who is registering.")
@pass_app
def models_load(app: AppContext, file: Path, actor: str) -> None:
    """Register the models and baselines of a TOML file (the [[models]] tables)."""
    from surveillance.config import parse_settings

    loaded = parse_settings({"models": read_toml(file).get("models", [])}, str(file))
    if not loaded.models:
        raise UsageError(f"{file} has no [[models]] table to load")
    store = app.store()
    for info in store.register_models(loaded.models, actor=actor):
        click.echo(
            f"registered {info.name} {info.version}: findings "
            f"{', '.join(info.findings)}; {len(info.baselines)} baseline figure(s)"
        )


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def models_list(app: AppContext, as_json: bool) -> None:
    """List registered models with their baselines."""
    items = app.store().models()
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


# ---- ingest -----------------------------------------------------------------------


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_app
def ingest(app: AppContext, paths: tuple[Path, ...]) -> None:
    """Ingest once: JSONL event files, CSV/FHIR diagnosis files, DICOM files and folders.

    Folders are searched for JSONL event files and DICOM files; diagnosis files
    (.csv, FHIR .json/.ndjson) are read when named directly.
    """
    from surveillance.ingest import Ingestor
    from surveillance.label_ingest import ingest_label_file, is_label_file

    files: list[Path] = []
    label_files: list[Path] = []
    others: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.jsonl") if p.is_file()))
            others.append(path)
        elif path.suffix == ".jsonl":
            files.append(path)
        elif is_label_file(path):
            label_files.append(path)
        else:
            others.append(path)
    store = app.store() if files or label_files else None
    ingestor = Ingestor(store, app.pseudonymizer()) if store else None
    for file in files:
        assert ingestor is not None
        c = ingestor.ingest_jsonl(file)
        click.echo(
            f"{file}: {c.predictions_new} prediction rows new ({c.predictions_duplicate} "
            f"already stored), {c.metadata} headers, {c.diagnoses_new} diagnoses new "
            f"({c.diagnoses_duplicate} already stored), {c.dead_letters} dead letter(s)"
        )
    for file in label_files:
        assert ingestor is not None
        c = ingest_label_file(ingestor, file)
        click.echo(
            f"{file}: {c.diagnoses_new} diagnoses new ({c.diagnoses_duplicate} already "
            f"stored), {c.dead_letters} dead letter(s)"
        )
    if store is not None:
        store.close()
    if others:
        from surveillance.dicom_ingest import ingest_dicom_paths

        ingest_dicom_paths(app, others)


# ---- check ------------------------------------------------------------------------


@cli.command()
@click.option("--model", "model_name", default=None, help="Only this model.")
@click.option(
    "--as-of",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Judge as if it were this UTC time (default: now).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def check(app: AppContext, model_name: str | None, as_of: datetime | None, as_json: bool) -> None:
    """Run the drift and performance checks now and apply the incident policy."""
    from surveillance.jobs.checks import run_checks

    moment = as_of.replace(tzinfo=UTC) if as_of else utcnow()
    results = run_checks(app.store(), app.settings, as_of=moment, model_name=model_name)
    summary = [
        {
            "model": r.model.name,
            "drift_checks": len(r.drift),
            "drifted": sum(c.status == "drift" for c in r.drift),
            "performance_checks": len(r.performance),
            "breaches": sum(c.status == "breach" for c in r.performance),
            "warnings": sum(c.status == "warning" for c in r.performance),
            "incidents_opened": [i.id for i in r.policy.opened],
            "incidents_updated": [i.id for i in r.policy.updated],
        }
        for r in results
    ]
    if as_json:
        print_json(summary)
        return
    for s in summary:
        click.echo(
            f"{s['model']}: {s['drift_checks']} drift checks ({s['drifted']} drifted), "
            f"{s['performance_checks']} performance checks ({s['breaches']} breaches, "
            f"{s['warnings']} warnings); incidents opened {s['incidents_opened'] or 'none'}, "
            f"updated {s['incidents_updated'] or 'none'}"
        )


# ---- incidents --------------------------------------------------------------------


@cli.group()
def incidents() -> None:
    """PMS / vigilance incidents."""


@incidents.command("list")
@click.option(
    "--status",
    type=click.Choice(["open", "acknowledged", "investigating", "closed", "all"]),
    default="open",
    show_default=True,
    help="'open' includes acknowledged and investigating.",
)
@click.option("--model", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def incidents_list(app: AppContext, status: str, model: str | None, as_json: bool) -> None:
    """List incidents with their vigilance deadlines and the time left."""
    items = app.store().incidents(status=None if status == "all" else status, model=model)
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo(f"no {'' if status == 'all' else status + ' '}incidents")
        return
    Console(width=200).print(incidents_table(items, utcnow()))


@incidents.command("show")
@click.argument("incident_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def incidents_show(app: AppContext, incident_id: int, as_json: bool) -> None:
    """One incident with its full timeline."""
    i = app.store().incident(incident_id)
    if as_json:
        print_json(i)
        return
    now = utcnow()
    console = Console()
    console.print(f"[bold]Incident {i.id}[/]: {i.title}")
    console.print(
        f"model {i.model} | {i.stratum_kind}: {i.stratum_value} | severity "
        f"{i.severity} | status {i.status}"
    )
    console.print(i.summary)
    console.print(
        f"aware since {when(i.aware_at)}; vigilance: {i.vigilance_class}; "
        f"EU MDR deadline {when(i.mdr_deadline_at)} ({time_left(i.mdr_deadline_at, now)})"
        f"; FDA deadline {when(i.fda_deadline_at)} ({time_left(i.fda_deadline_at, now)})"
    )
    if i.resolution:
        console.print(f"resolution: {i.resolution} (CAPA {i.capa_reference or '-'})")
    table = Table("when", "what", "who", "note / evidence", title="Timeline")
    for e in i.events:
        evidence = (
            f"drift check {e.drift_check_id}"
            if e.drift_check_id
            else f"performance check {e.performance_check_id}"
            if e.performance_check_id
            else ""
        )
        table.add_row(when(e.at), e.kind, e.actor, e.note or evidence)
    console.print(table)


@incidents.command("ack")
@click.argument("incident_id", type=int)
@click.option("--by", "actor", required=True, help="Who acknowledges (name or handle).")
@click.option("--note", default=None)
@pass_app
def incidents_ack(app: AppContext, incident_id: int, actor: str, note: str | None) -> None:
    """Acknowledge an incident (stops re-paging; the timeline records who and when)."""
    now = utcnow()
    i = app.store().update_incident(
        incident_id,
        actor=actor,
        kind="acknowledged",
        note=note,
        status="acknowledged",
        acknowledged_at=now,
        acknowledged_by=actor,
    )
    click.echo(f"incident {i.id} acknowledged by {actor}")


@incidents.command("close")
@click.argument("incident_id", type=int)
@click.option("--resolution", required=True, help="What was found and done.")
@click.option("--capa", "capa_reference", default=None, help="CAPA reference, if any.")
@click.option("--by", "actor", default="cli", show_default=True)
@pass_app
def incidents_close(
    app: AppContext, incident_id: int, resolution: str, capa_reference: str | None, actor: str
) -> None:
    """Close an incident with its resolution (and CAPA reference)."""
    i = app.store().update_incident(
        incident_id,
        actor=actor,
        kind="closed",
        note=resolution,
        status="closed",
        closed_at=utcnow(),
        resolution=resolution,
        capa_reference=capa_reference,
    )
    click.echo(f"incident {i.id} closed: {resolution}")


# ---- dead letters ---------------------------------------------------------------


@cli.group()
def deadletters() -> None:
    """Records that were rejected, with the reason."""


@deadletters.command("list")
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed ones.")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def deadletters_list(app: AppContext, include_replayed: bool, limit: int, as_json: bool) -> None:
    """List dead letters: where each came from and why it was rejected."""
    items = app.store().dead_letters(include_replayed=include_replayed, limit=limit)
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("no dead letters")
        return
    table = Table("id", "received", "kind", "position", "reason", title="Dead letters")
    for d in items:
        table.add_row(str(d.id), when(d.received_at), d.kind or "?", d.position, d.reason)
    Console(width=200).print(table)


# ---- audit / keys ----------------------------------------------------------------


@cli.group()
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def audit_verify(app: AppContext, as_json: bool) -> None:
    """Check that no audit event was edited or deleted (exit 1 if one was)."""
    report = app.store().verify_audit()
    if as_json:
        print_json({**_jsonable(report), "ok": report.ok})
    elif report.ok:
        click.echo(f"audit chain intact: {report.events} events, head {report.head_hash}")
    else:
        click.echo(f"audit chain BROKEN ({len(report.problems)} problem(s)):", err=True)
        for problem in report.problems:
            click.echo(f"  - {problem}", err=True)
    if not report.ok:
        sys.exit(1)


@cli.group()
def keys() -> None:
    """The pseudonym (HMAC) key."""


@keys.command("generate")
@click.argument("path", type=click.Path(path_type=Path))
def keys_generate(path: Path) -> None:
    """Write a new random pseudonym key to PATH (mode 0600; refuses to overwrite)."""
    from surveillance.pseudonym import generate_key_file

    generate_key_file(path)
    click.echo(
        f"wrote {path}; set SURVEILLANCE_PSEUDONYM_KEY_FILE={path} and back it up "
        "separately from the database"
    )


# ---- daemon -------------------------------------------------------------------------


@cli.command()
@click.option("--once", is_flag=True, help="Run the checks and alerts once now and exit.")
@pass_app
def run(app: AppContext, once: bool) -> None:
    """The daemon: refuses an out-of-date schema, then runs the scheduled jobs.

    Across replicas exactly one runs the scheduler (PostgreSQL advisory lock);
    the others wait as standbys and take over when it dies.
    """
    import logging

    from surveillance.daemon import Daemon
    from surveillance.scheduled_jobs import ONCE_JOBS, JobContext, build_jobs
    from surveillance.scheduler import SchedulerService, run_once

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
    if once:
        ran = run_once(store, [j for j in jobs if j.id in ONCE_JOBS], context, now=utcnow())
        click.echo(
            f"{when(utcnow())} ran {', '.join(ran) or 'nothing (already ran this second)'} on "
            f"{url}; {len(store.incidents(status='open'))} open incident(s)"
        )
        store.close()
        return
    from surveillance.services import daemon_services

    services = [
        *daemon_services(store, settings, app.pseudonymizer()),
        SchedulerService(store, jobs, context),
    ]
    click.echo(f"surveillance daemon on {url}: " + "; ".join(f"{j.id} {j.schedule}" for j in jobs))
    reason = Daemon(services).run()
    click.echo(f"surveillance daemon stopped ({reason})")
    store.close()


def _register_areas() -> None:
    """Commands of each area live in their own module (``surveillance/cli_*.py``)."""
    from surveillance import cli_dicom, cli_embed, cli_kafka, cli_ops, cli_reports

    for area in (cli_kafka, cli_dicom, cli_embed, cli_ops, cli_reports):
        area.register(cli)


def group(name: str, help_text: str) -> click.Group:
    """The top-level group ``name``, created on first use (for area modules)."""
    existing = cli.commands.get(name)
    if existing is None:
        existing = click.Group(name, help=help_text)
        cli.add_command(existing)
    if not isinstance(existing, click.Group):
        raise TypeError(f"'{name}' is a command, not a group")
    return existing


_register_areas()


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps the project's errors to one-line messages and exit codes."""
    try:
        cli.main(args=argv, prog_name="surveillance", standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code if isinstance(exc, click.UsageError) else 1)
    except SurveillanceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["cli", "main"]
