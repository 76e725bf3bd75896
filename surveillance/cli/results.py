"""Per-stratum, per-window drift and performance results (what the checks decided)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

import click
from rich.console import Console

from surveillance.cli.app import AppContext, pass_app, print_json
from surveillance.core.errors import UsageError
from surveillance.outputs.views import drift_results_table, performance_results_table
from surveillance.store import DriftCheck, ModelInfo, PerformanceCheck, Store

WINDOW_FORMATS = ["%Y-%m-%d"]


def _models(store: Store, name: str | None) -> list[ModelInfo]:
    return [store.registry.model(name)] if name else store.registry.models()


def _stratum_filter(stratum: str | None) -> tuple[str, str | None] | None:
    """``scanner``, ``site=Northgate``, ``overall``: kind and optional value."""
    if stratum is None:
        return None
    kind, sep, value = stratum.partition("=")
    if not kind or (sep and not value):
        raise UsageError(
            f"--stratum {stratum!r}: expected KIND or KIND=VALUE, e.g. 'scanner' or "
            "'site=Northgate'"
        )
    return kind, (value if sep else None)


def _select(
    checks: list[DriftCheck] | list[PerformanceCheck],
    stratum: tuple[str, str | None] | None,
    window: datetime | None,
    status: str | None,
) -> list[DriftCheck] | list[PerformanceCheck]:
    out = []
    for c in checks:
        if stratum is not None and (
            c.stratum_kind != stratum[0] or stratum[1] not in (None, c.stratum_value)
        ):
            continue
        if window is not None and not (c.window_start <= window < c.window_end):
            continue
        if status is not None and c.status != status:
            continue
        out.append(c)
    return out  # type: ignore[return-value]


def _options(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(
        [
            click.option("--model", "model_name", default=None, help="Only this model."),
            click.option(
                "--stratum",
                default=None,
                help="KIND or KIND=VALUE: overall, site, scanner, sex, age_band "
                "(e.g. 'site=Northgate').",
            ),
            click.option(
                "--window",
                type=click.DateTime(formats=WINDOW_FORMATS),
                default=None,
                help="Only the window containing this UTC date (YYYY-MM-DD).",
            ),
            click.option("--status", default=None, help="Only this status (e.g. drift, breach)."),
            click.option("--json", "as_json", is_flag=True),
        ]
    ):
        f = option(f)
    return f


@click.group()
def results() -> None:
    """Per-stratum, per-window outcomes of the drift and performance checks."""


def _show(
    app: AppContext,
    kind: str,
    model_name: str | None,
    stratum: str | None,
    window: datetime | None,
    status: str | None,
    as_json: bool,
) -> None:
    """One listing for both kinds: select, then JSON or a table."""
    store = app.store()
    moment = window.replace(tzinfo=UTC) if window else None
    chosen = _stratum_filter(stratum)
    read = store.checks.drift if kind == "drift" else store.checks.performance
    rows: list[DriftCheck] | list[PerformanceCheck] = []
    for model in _models(store, model_name):
        rows += _select(read(model.id), chosen, moment, status)  # type: ignore[operator]
    if as_json:
        print_json([asdict(c) for c in rows])
        return
    if not rows:
        click.echo(f"no {kind} results match")
        return
    table = drift_results_table if kind == "drift" else performance_results_table
    Console(width=220).print(table(rows))  # type: ignore[arg-type]


@results.command("drift")
@_options
@pass_app
def results_drift(
    app: AppContext,
    model_name: str | None,
    stratum: str | None,
    window: datetime | None,
    status: str | None,
    as_json: bool,
) -> None:
    """Drift checks: window, stratum, signal, detector, status, p, adjusted p, effect size."""
    _show(app, "drift", model_name, stratum, window, status, as_json)


@results.command("performance")
@_options
@pass_app
def results_performance(
    app: AppContext,
    model_name: str | None,
    stratum: str | None,
    window: datetime | None,
    status: str | None,
    as_json: bool,
) -> None:
    """Performance checks: window, stratum, finding, metric, value with CI, alert limit."""
    _show(app, "performance", model_name, stratum, window, status, as_json)


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    cli.add_command(results)
