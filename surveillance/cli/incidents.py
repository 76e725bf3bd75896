"""PMS / vigilance incidents: list, show and every change (each needs --by).

Every change (ack, investigate, assess, close, report) takes ``--json`` and
delivers pending alerts at once through the outbox (a channel that is down is
retried by the daemon).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import AppContext, pass_app, print_json
from surveillance.core.errors import UsageError
from surveillance.core.statuses import ReportAuthority
from surveillance.incidents.vigilance import VigilanceClass, deadlines, time_left
from surveillance.outputs.views import deadline_text, incidents_table, when
from surveillance.store import Incident
from surveillance.store.incidents import incident_deadlines
from surveillance.store.types import utcnow

ASSESSABLE = [c.value for c in VigilanceClass if c is not VigilanceClass.ASSESSMENT_PENDING]
BY_HELP = "Who makes the change (name or handle); recorded on the timeline and audit log."


def _with_deadlines(incident: Incident, now: datetime) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(incident)
    data["deadlines"] = [asdict(d) for d in incident_deadlines(incident, now)]
    return data


def _deliver(app: AppContext) -> dict[str, int]:
    """Send the alerts this change queued (resolve, silence, refreshed annotations)."""
    from surveillance.incidents.alerts.delivery import deliver_now

    report = deliver_now(app.store(), app.settings)
    return {
        "queued": report.queued,
        "delivered": report.delivered,
        "retrying": report.retrying,
        "failed": report.failed,
    }


def _done(app: AppContext, as_json: bool, incident: Incident, text: str, **extra: Any) -> None:
    alerts = _deliver(app)
    if as_json:
        print_json({"incident": _with_deadlines(incident, utcnow()), "alerts": alerts, **extra})
        return
    click.echo(text)
    if alerts["retrying"] or alerts["failed"]:
        click.echo(
            f"alerts: {alerts['delivered']} delivered, {alerts['retrying']} will be retried by "
            f"the daemon, {alerts['failed']} failed (see 'surveillance alerts list')",
            err=True,
        )


@click.group()
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
    items = app.store().incidents.find(status=None if status == "all" else status, model=model)
    if as_json:
        now = utcnow()
        print_json([_with_deadlines(i, now) for i in items])
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
    i = app.store().incidents.get(incident_id)
    now = utcnow()
    if as_json:
        print_json(_with_deadlines(i, now))
        return
    console = Console()
    console.print(f"[bold]Incident {i.id}[/]: {i.title}")
    console.print(
        f"model {i.model} | {i.stratum_kind}: {i.stratum_value} | severity "
        f"{i.severity} | status {i.status}"
    )
    if i.recurrence_of:
        console.print(f"recurrence of incident {i.recurrence_of} (closed); new awareness date")
    console.print(i.summary)
    console.print(f"aware since {when(i.aware_at)}; vigilance: {i.vigilance_class}")
    for state in incident_deadlines(i, now):
        reference = f" (reference {state.reference})" if state.reference else ""
        console.print(
            f"  {state.authority} deadline: "
            + deadline_text(state, now).replace("\n", " - ")
            + reference
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
@click.option("--by", "actor", required=True, help=BY_HELP)
@click.option("--note", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def incidents_ack(
    app: AppContext, incident_id: int, actor: str, note: str | None, as_json: bool
) -> None:
    """Acknowledge an incident: silences its Alertmanager alert; a second ack changes nothing."""
    i, changed = app.store().incidents.ack(incident_id, actor=actor, note=note)
    text = (
        f"incident {i.id} acknowledged by {actor}"
        if changed
        else f"incident {i.id} was already acknowledged by {i.acknowledged_by} "
        f"at {when(i.acknowledged_at)}; nothing changed"
    )
    _done(app, as_json, i, text, changed=changed)


@incidents.command("close")
@click.argument("incident_id", type=int)
@click.option("--resolution", required=True, help="What was found and done.")
@click.option("--capa", "capa_reference", default=None, help="CAPA reference, if any.")
@click.option("--by", "actor", required=True, help=BY_HELP)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def incidents_close(
    app: AppContext,
    incident_id: int,
    resolution: str,
    capa_reference: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Close an incident with its resolution (and CAPA reference); resolves its alerts.

    The evidence it was closed on never reopens it; windows after the close
    that drift or breach again open a recurrence linked to it.
    """
    i = app.store().incidents.update(
        incident_id,
        actor=actor,
        kind="closed",
        note=resolution,
        status="closed",
        closed_at=utcnow(),
        resolution=resolution,
        capa_reference=capa_reference,
    )
    _done(app, as_json, i, f"incident {i.id} closed: {resolution}")


@incidents.command("report")
@click.argument("incident_id", type=int)
@click.option(
    "--authority",
    type=click.Choice([a.value for a in ReportAuthority]),
    required=True,
    help="Who the vigilance report went to: eu-mdr (competent authority via EUDAMED) or fda.",
)
@click.option("--reference", required=True, help="Report reference (e.g. MIR or MedWatch number).")
@click.option(
    "--at",
    "reported_at",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]),
    default=None,
    help="When the report was made, UTC (default: now).",
)
@click.option("--by", "actor", required=True, help=BY_HELP)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def incidents_report(
    app: AppContext,
    incident_id: int,
    authority: str,
    reference: str,
    reported_at: datetime | None,
    actor: str,
    as_json: bool,
) -> None:
    """Record the vigilance report made to an authority; its deadline then reads met or missed."""
    store = app.store()
    now = utcnow()
    moment = reported_at.replace(tzinfo=UTC) if reported_at else now
    report = store.incidents.record_report(
        incident_id, authority=authority, reference=reference, reported_at=moment, actor=actor
    )
    i = store.incidents.get(incident_id)
    state = next(d for d in incident_deadlines(i, now) if d.authority == authority)
    _done(
        app,
        as_json,
        i,
        f"incident {i.id}: {authority} report {report.reference} recorded "
        f"({when(report.reported_at)} UTC); deadline {state.status}",
    )


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
@click.option("--by", "actor", required=True, help=BY_HELP)
@click.option("--note", default=None, help="Rationale, recorded on the timeline.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def incidents_assess(
    app: AppContext,
    incident_id: int,
    vigilance_class: str,
    remedial_action: bool,
    actor: str,
    note: str | None,
    as_json: bool,
) -> None:
    """Record the vigilance assessment; deadlines are recomputed from awareness."""
    store = app.store()
    incident = store.incidents.get(incident_id)
    if remedial_action and vigilance_class == VigilanceClass.NOT_REPORTABLE.value:
        raise UsageError("--remedial-action contradicts --class not_reportable; pick one")
    mdr, fda = deadlines(vigilance_class, incident.aware_at, remedial_action=remedial_action)
    summary = f"assessed {vigilance_class}" + (" with remedial action" if remedial_action else "")
    updated = store.incidents.update(
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
        text = f"incident {updated.id}: {vigilance_class}; no reporting deadline"
    else:
        text = (
            f"incident {updated.id}: {vigilance_class}; EU MDR report due {when(mdr)} UTC "
            f"({time_left(mdr, now)}); FDA report due {when(fda)} UTC ({time_left(fda, now)})"
        )
    _done(app, as_json, updated, text)


@click.command("investigate")
@click.argument("incident_id", type=int)
@click.option("--by", "actor", required=True, help=BY_HELP)
@click.option("--note", default=None)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def incidents_investigate(
    app: AppContext, incident_id: int, actor: str, note: str | None, as_json: bool
) -> None:
    """Mark an incident as under investigation (recorded on its timeline)."""
    i = app.store().incidents.update(
        incident_id, actor=actor, kind="investigating", note=note, status="investigating"
    )
    _done(app, as_json, i, f"incident {i.id} under investigation by {actor}")


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
    from surveillance.incidents.trend import assess_trends

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


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    cli.add_command(incidents)
    for command in (incidents_assess, incidents_investigate, incidents_trend):
        incidents.add_command(command)
