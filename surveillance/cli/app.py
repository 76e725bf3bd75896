"""The ``surveillance`` command line (DESIGN.md, "CLI").

Exit codes: 0 success, 2 bad input or usage (with a message saying what to fix),
1 runtime failure. Anything that lists takes ``--json``. Errors of the project's
family are printed as one line, never as a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from surveillance.core.config import Settings, load_settings
from surveillance.core.errors import SurveillanceError
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
