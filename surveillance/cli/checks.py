"""Run the drift and performance checks now."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from surveillance.cli.app import AppContext, group, pass_app, print_json
from surveillance.store.types import utcnow


@click.command()
@click.option("--model", "model_name", default=None, help="Only this model.")
@click.option(
    "--as-of",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="Judge as if it were this UTC time (default: now).",
)
@click.option(
    "--full",
    is_flag=True,
    help="Re-judge every window, not only new ones and those whose labels changed "
    "(after a configuration change).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def check(
    app: AppContext, model_name: str | None, as_of: datetime | None, full: bool, as_json: bool
) -> None:
    """Run the drift and performance checks now and apply the incident policy.

    Incremental: judges only the windows not judged yet, the performance windows
    whose labels changed since, and every window after a new reference set.
    """
    from surveillance.scheduling.checks import run_checks

    moment = as_of.replace(tzinfo=UTC) if as_of else utcnow()
    results = run_checks(app.store(), app.settings, as_of=moment, model_name=model_name, full=full)
    from surveillance.incidents.alerts.delivery import deliver_now

    # pages of new incidents leave now, not at the daemon's next tick (failures stay queued)
    deliver_now(app.store(), app.settings)
    summary = [
        {
            "model": r.model.name,
            "windows_judged": r.windows_judged,
            "seconds": round(r.seconds, 2),
            "drift_checks": r.drift_tally.checks,
            "drifted": r.drift_tally.by_status.get("drift", 0),
            "below_tolerance": r.drift_tally.by_status.get("below_tolerance", 0),
            "drift_undecided": r.drift_tally.by_status.get("insufficient_data", 0),
            "performance_checks": len(r.performance),
            "breaches": sum(c.status == "breach" for c in r.performance),
            "warnings": sum(c.status == "warning" for c in r.performance),
            "performance_undecided": sum(c.status == "insufficient_data" for c in r.performance),
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
            f"{s['model']}: {s['drift_checks']} drift checks ({s['drifted']} drifted, "
            f"{s['below_tolerance']} significant but below tolerance, "
            f"{s['drift_undecided']} undecided), "
            f"{s['performance_checks']} performance checks ({s['breaches']} breaches, "
            f"{s['warnings']} warnings, {s['performance_undecided']} undecided); "
            f"incidents opened {s['incidents_opened'] or 'none'}, "
            f"updated {s['incidents_updated'] or 'none'}"
        )


@click.command("detection")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def bench_detection(app: AppContext, runs: int, seed: int, as_json: bool) -> None:
    """False-alarm rate and power per signal family, beside the goals (seeded simulation)."""
    from surveillance.analysis.detection_bench import run_detection_bench

    figures = run_detection_bench(runs=runs, seed=seed, config=app.settings.drift)
    if as_json:
        print_json(figures)
        return
    for name, f in figures["families"].items():
        rates = (
            f"false alarms {f['false_alarm_rate']:.2f}, power {f['power']:.2f}"
            if "power" in f
            else ", ".join(f"{k}: {v['status']}" for k, v in f.items() if isinstance(v, dict))
        )
        click.echo(f"{name}: {rates}  (goal: {f['goal']})")


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    cli.add_command(check)
    group("bench", "Benchmarks that print JSON figures for sizing a site.").add_command(
        bench_detection
    )
