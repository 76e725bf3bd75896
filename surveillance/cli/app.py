"""The ``surveillance`` command line (DESIGN.md, "CLI").

Exit codes: 0 success, 2 bad input or usage (with a message saying what to fix),
1 runtime failure. Anything that lists takes ``--json``. Errors of the project's
family are printed as one line, never as a traceback.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from surveillance.core.config import Settings, load_settings
from surveillance.core.errors import SurveillanceError, UsageError
from surveillance.store import Store

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
        from surveillance.intake.pseudonym import load_audit_key

        store = Store.open(
            self.settings.service.db_url, require_current_schema=require_current_schema
        )
        if require_current_schema:  # an old schema has no audit_event.key_id yet
            store.audit.use_key(load_audit_key(self.settings.service))
        return store

    def pseudonymizer(self) -> Any:
        from surveillance.intake.pseudonym import load_pseudonymizer

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


# ---- shared by the kafka and bench areas -------------------------------------------


def require_postgres(app: AppContext, what: str) -> None:
    """UsageError unless the database is PostgreSQL (``what``: the command, for the message)."""
    if not app.settings.service.db_url.startswith(("postgresql", "postgres")):
        raise UsageError(
            f"{what} needs PostgreSQL: point --db-url (or SURVEILLANCE_DB_URL) at a "
            "scratch PostgreSQL database"
        )


def registered_model(store: Store, name: str | None) -> Any:
    """The registered model ``name`` (default: the first one), or UsageError."""
    models = store.registry.models()
    if not models:
        raise UsageError("no model registered: run 'surveillance models load FILE' first")
    model = next((m for m in models if m.name == name), None) if name else models[0]
    if model is None:
        raise UsageError(f"no model {name!r} registered ({', '.join(m.name for m in models)})")
    return model


def kafka_bootstrap(app: AppContext, bootstrap: str | None) -> str:
    """``--bootstrap`` or ``[kafka] bootstrap``, or UsageError."""
    value = bootstrap or app.settings.kafka.bootstrap
    if not value:
        raise UsageError(
            "no Kafka bootstrap servers: pass --bootstrap host:port or set "
            "SURVEILLANCE_KAFKA_BOOTSTRAP"
        )
    return value


_consumer_options = [
    click.option("--bootstrap", default=None, help="Kafka bootstrap servers (host:port,...)."),
    click.option("--group", "group_id", default=None, help="Consumer group (default [kafka])."),
    click.option(
        "--writers", type=click.IntRange(1, 16), default=2, show_default=True,
        help="Writer threads (each owns a share of the partitions).",
    ),
    click.option(
        "--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True,
        help="Records per transaction (a poll takes up to writers x this).",
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


def with_consumer_options(func: Any) -> Any:
    """The Kafka consumer's options (``kafka consume``, ``bench ingest``)."""
    for option in reversed(_consumer_options):
        func = option(func)
    return func


def kafka_service(
    app: AppContext,
    store: Store,
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
    """The Kafka intake service for :func:`with_consumer_options`' values."""
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
        bootstrap=kafka_bootstrap(app, bootstrap),
        writers=writers,
        max_records=batch_size,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=heartbeat_ms,
        check_crcs=check_crcs,
    )


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


# ---- audit / keys ----------------------------------------------------------------


def group(name: str, help_text: str) -> click.Group:
    """The top-level group ``name``, created on first use (for area modules)."""
    existing = cli.commands.get(name)
    if existing is None:
        existing = click.Group(name, help=help_text)
        cli.add_command(existing)
    if not isinstance(existing, click.Group):
        raise TypeError(f"'{name}' is a command, not a group")
    return existing


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps the project's errors to one-line messages and exit codes."""
    from surveillance.core.phi_logging import install_phi_filter

    # pydicom/pynetdicom warnings quote UIDs and values: redact them everywhere
    install_phi_filter()
    if argv is None:  # the process's own entry point
        # what the imports made lives as long as the process: frozen, every garbage
        # collection of the run (and the interpreter's final ones) skips it
        gc.freeze()
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
    finally:
        if argv is None:  # about to exit: the final collections would walk everything
            gc.freeze()  # the command imported and made (~0.4 s); files and connections still close


__all__ = ["cli", "main"]
