"""Run the drift and performance checks now."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from surveillance.cli.app import AppContext, pass_app, print_json
from surveillance.store.types import utcnow


@click.command()
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
    from surveillance.scheduling.checks import run_checks

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


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    cli.add_command(check)
