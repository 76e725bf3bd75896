"""PMS / vigilance incidents: list, show and every change (each needs --by)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import AppContext, pass_app, print_json
from surveillance.core.errors import UsageError
from surveillance.incidents.vigilance import VigilanceClass, deadlines, time_left
from surveillance.outputs.views import incidents_table, when
from surveillance.store.types import utcnow

ASSESSABLE = [c.value for c in VigilanceClass if c is not VigilanceClass.ASSESSMENT_PENDING]


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
    i = app.store().incidents.get(incident_id)
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
    i = app.store().incidents.update(
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
    click.echo(f"incident {i.id} closed: {resolution}")


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
    i = app.store().incidents.update(
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
