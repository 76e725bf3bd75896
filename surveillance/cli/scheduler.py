"""The job scheduler: which replica leads, what ran, what is due."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import AppContext, pass_app, print_json
from surveillance.outputs.views import when


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def scheduler_status(app: AppContext, as_json: bool) -> None:
    """Who leads, each job's schedule and next run, and the latest runs."""
    from surveillance.scheduling.jobs import build_jobs
    from surveillance.scheduling.scheduler import leader_info, scheduled_next_runs

    store = app.store()
    jobs = build_jobs(app.settings)
    info = leader_info(store)
    next_runs = scheduled_next_runs(store)
    latest = {j.id: store.ledger.runs(job_id=j.id, limit=1) for j in jobs}
    rows = [
        {
            "job": j.id,
            "schedule": j.schedule,
            "next_run": next_runs.get(j.id),
            "last_scheduled_for": latest[j.id][0].scheduled_for if latest[j.id] else None,
            "last_status": latest[j.id][0].status if latest[j.id] else None,
            "last_error": latest[j.id][0].error if latest[j.id] else None,
        }
        for j in jobs
    ]
    if as_json:
        print_json({"leader": info, "jobs": rows})
        return
    leader = info.get("leader")
    if info["backend"] != "postgresql":
        click.echo(f"{info['backend']}: single scheduler, no leader election")
    elif leader:
        click.echo(
            f"leader: {leader['name']} ({leader['client'] or 'local'}), session since "
            f"{leader['session_started']}; {info['standbys']} standby(s)"
        )
    else:
        click.echo(f"no scheduler leads right now; {info['standbys']} standby(s)")
    table = Table("job", "schedule", "next run", "last scheduled", "status", "error")
    for r in rows:
        table.add_row(
            str(r["job"]),
            str(r["schedule"]),
            when(r["next_run"]),  # type: ignore[arg-type]
            when(r["last_scheduled_for"]),  # type: ignore[arg-type]
            str(r["last_status"] or "-"),
            str(r["last_error"] or "")[:60],
        )
    Console(width=200).print(table)


@click.group()
def scheduler() -> None:
    """The job scheduler (one leader across replicas)."""


scheduler.add_command(scheduler_status)


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    cli.add_command(scheduler)
