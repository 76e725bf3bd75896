"""CLI commands for vigilance assessment, alerts and the scheduler.

``surveillance incidents assess ID --class ... --by NAME``  vigilance class, new deadlines
``surveillance incidents investigate ID --by NAME``        timeline: investigating
``surveillance incidents trend``                           MDR Art. 88 trend test
``surveillance alerts list|retry|test``                    the delivery log, re-arm, test page
``surveillance scheduler status``                          leader, next runs, recent runs
"""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli import AppContext, group, pass_app, print_json
from surveillance.errors import UsageError
from surveillance.store.types import utcnow
from surveillance.views import when
from surveillance.vigilance import VigilanceClass, deadlines, time_left

ASSESSABLE = [c.value for c in VigilanceClass if c is not VigilanceClass.ASSESSMENT_PENDING]


# ---- incidents -------------------------------------------------------------------


@click.command("assess")
@click.argument("incident_id", type=int)
@click.option(
    "--class",
    "vigilance_class",
    type=click.Choice(ASSESSABLE),
    required=True,
    help="EU MDR / FDA vigilance class of the incident.",
)
@click.option(
    "--remedial-action",
    is_flag=True,
    help="Remedial action is needed to prevent an unreasonable risk of substantial harm "
    "(FDA 21 CFR 803.53: 5-work-day report).",
)
@click.option("--by", "actor", required=True, help="Who assessed (name or handle).")
@click.option("--note", default=None, help="Rationale, recorded on the timeline.")
@pass_app
def incidents_assess(
    app: AppContext,
    incident_id: int,
    vigilance_class: str,
    remedial_action: bool,
    actor: str,
    note: str | None,
) -> None:
    """Record the vigilance assessment; deadlines are recomputed from awareness."""
    store = app.store()
    incident = store.incident(incident_id)
    if remedial_action and vigilance_class == VigilanceClass.NOT_REPORTABLE.value:
        raise UsageError("--remedial-action contradicts --class not_reportable; pick one")
    mdr, fda = deadlines(vigilance_class, incident.aware_at, remedial_action=remedial_action)
    summary = f"assessed {vigilance_class}" + (" with remedial action" if remedial_action else "")
    updated = store.update_incident(
        incident_id,
        actor=actor,
        kind="assessed",
        note=f"{summary}: {note}" if note else summary,
        vigilance_class=vigilance_class,
        remedial_action=remedial_action,
        mdr_deadline_at=mdr,
        fda_deadline_at=fda,
    )
    now = utcnow()
    if mdr is None and fda is None:
        click.echo(f"incident {updated.id}: {vigilance_class}; no reporting deadline")
        return
    click.echo(
        f"incident {updated.id}: {vigilance_class}; EU MDR report due {when(mdr)} UTC "
        f"({time_left(mdr, now)}); FDA report due {when(fda)} UTC ({time_left(fda, now)})"
    )


@click.command("investigate")
@click.argument("incident_id", type=int)
@click.option("--by", "actor", required=True, help="Who investigates.")
@click.option("--note", default=None)
@pass_app
def incidents_investigate(app: AppContext, incident_id: int, actor: str, note: str | None) -> None:
    """Mark an incident as under investigation (recorded on its timeline)."""
    i = app.store().update_incident(
        incident_id, actor=actor, kind="investigating", note=note, status="investigating"
    )
    click.echo(f"incident {i.id} under investigation by {actor}")


@click.command("trend")
@click.option("--model", default=None)
@click.option("--period-days", type=click.IntRange(7, 366), default=90, show_default=True)
@click.option("--baseline-periods", type=click.IntRange(1, 20), default=4, show_default=True)
@click.option("--alpha", type=click.FloatRange(0.0001, 0.5), default=0.05, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def incidents_trend(
    app: AppContext,
    model: str | None,
    period_days: int,
    baseline_periods: int,
    alpha: float,
    as_json: bool,
) -> None:
    """Trend test (EU MDR Article 88): a significant rise in non-serious incidents."""
    from surveillance.trend import assess_trends

    trends = assess_trends(
        app.store(),
        now=utcnow(),
        model=model,
        period_days=period_days,
        baseline_periods=baseline_periods,
        alpha=alpha,
    )
    if as_json:
        print_json(trends)
        return
    table = Table(
        "model",
        "period",
        "non-serious",
        "baseline",
        "rate/30d vs baseline",
        "p",
        "trend report?",
        "pending assessment",
        title="MDR Art. 88 trend test",
    )
    for t in trends:
        r = t.result
        table.add_row(
            t.model,
            f"{t.period_start:%Y-%m-%d}..{t.period_end:%Y-%m-%d}",
            str(r.current),
            str(r.baseline),
            f"{r.current_rate_per_30d:.2f} vs {r.baseline_rate_per_30d:.2f}",
            f"{r.p_value:.3g}",
            "[bold red]YES: significant rise[/]" if r.flagged else "no",
            str(t.pending_assessment),
        )
    Console(width=200).print(table)


# ---- alerts -------------------------------------------------------------------------


@click.command("list")
@click.option("--incident", "incident_id", type=int, default=None)
@click.option(
    "--status",
    type=click.Choice(["pending", "delivered", "failed", "cancelled"]),
    default=None,
)
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def alerts_list(
    app: AppContext, incident_id: int | None, status: str | None, limit: int, as_json: bool
) -> None:
    """The delivery log: one row per (incident, channel, open|resolve)."""
    from surveillance.store.alert_store import deliveries

    items = deliveries(app.store(), incident_id=incident_id, status=status, limit=limit)
    if as_json:
        print_json([{k: v for k, v in vars_of(d).items() if k != "payload"} for d in items])
        return
    if not items:
        click.echo("no alert deliveries")
        return
    table = Table(
        "id",
        "incident",
        "channel",
        "kind",
        "status",
        "attempts",
        "delivered",
        "next attempt",
        "last error",
        title="Alert deliveries",
    )
    for d in items:
        table.add_row(
            str(d.id),
            str(d.incident_id),
            d.channel,
            d.kind,
            d.status,
            str(d.attempts),
            when(d.delivered_at),
            when(d.next_attempt_at),
            (d.last_error or "")[:80],
        )
    Console(width=200).print(table)


def vars_of(item: object) -> dict[str, object]:
    return {name: getattr(item, name) for name in getattr(item, "__slots__", ())}


@click.command("retry")
@click.argument("delivery_id", type=int, required=False)
@click.option("--by", "actor", default="cli", show_default=True)
@pass_app
def alerts_retry(app: AppContext, delivery_id: int | None, actor: str) -> None:
    """Re-arm failed deliveries (or one by id) and send what is due now."""
    from surveillance.alerts.delivery import process_alerts
    from surveillance.store.alert_store import rearm_deliveries

    store = app.store()
    now = utcnow()
    count = rearm_deliveries(store, now=now, delivery_id=delivery_id, actor=actor)
    report = process_alerts(store, app.settings, now=now)
    click.echo(
        f"re-armed {count} delivery(ies); delivered {report.delivered}, "
        f"retrying {report.retrying}, failed {report.failed}"
    )


@click.command("test")
@click.option("--channel", "channel_name", default=None, help="Only this channel.")
@pass_app
def alerts_test(app: AppContext, channel_name: str | None) -> None:
    """Send a test message to each configured channel (nothing is recorded)."""
    from surveillance.alerts.channels import ChannelError, render, send
    from surveillance.alerts.messages import AlertMessage

    channels = [c for c in app.settings.alerts if channel_name in (None, c.name)]
    if not channels:
        known = ", ".join(c.name for c in app.settings.alerts) or "none"
        raise UsageError(f"no alert channel {channel_name or ''} configured (configured: {known})")
    now = datetime.now(UTC)
    message = AlertMessage(
        kind="open",
        incident_id=0,
        model="test",
        severity="low",
        status="open",
        title="Test alert from surveillance (no action needed)",
        what="This is a test of the alert channel configuration.",
        where={"model": "test"},
        how_much="-",
        baseline="-",
        since=now,
        opened_at=now,
        next_steps=("Nothing to do: this was a test.",),
        vigilance="not applicable",
        dashboard_url=app.settings.service.dashboard_url,
        incident_command="surveillance incidents list",
    )
    failures = 0
    for channel in channels:
        try:
            send(channel, render(channel, message, now))
            click.echo(f"{channel.name} ({channel.type}): delivered")
        except ChannelError as exc:
            failures += 1
            click.echo(f"{channel.name} ({channel.type}): FAILED: {exc}", err=True)
    if failures:
        raise click.ClickException(f"{failures} channel(s) failed")


# ---- scheduler ---------------------------------------------------------------------


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def scheduler_status(app: AppContext, as_json: bool) -> None:
    """Who leads, each job's schedule and next run, and the latest runs."""
    from surveillance.scheduled_jobs import build_jobs
    from surveillance.scheduler import leader_info, scheduled_next_runs
    from surveillance.store.alert_store import job_runs

    store = app.store()
    jobs = build_jobs(app.settings)
    info = leader_info(store)
    next_runs = scheduled_next_runs(store)
    latest = {j.id: job_runs(store, job_id=j.id, limit=1) for j in jobs}
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


def register(cli: click.Group) -> None:
    """Add this area's commands to ``cli`` (see ``surveillance.cli.group``)."""
    incidents = group("incidents", "PMS / vigilance incidents.")
    for command in (incidents_assess, incidents_investigate, incidents_trend):
        incidents.add_command(command)
    alerts = group("alerts", "Alert deliveries: the log, retries, channel tests.")
    for command in (alerts_list, alerts_retry, alerts_test):
        alerts.add_command(command)
    group("scheduler", "The job scheduler (one leader across replicas).").add_command(
        scheduler_status
    )
