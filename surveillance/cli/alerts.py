"""Alert deliveries: the log, retries, channel tests."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import AppContext, pass_app, print_json
from surveillance.core.errors import UsageError
from surveillance.outputs.views import when
from surveillance.store.types import utcnow


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

    items = app.store().outbox.find(incident_id=incident_id, status=status, limit=limit)
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
@click.option("--by", "actor", required=True, help="Who re-arms (name or handle).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def alerts_retry(app: AppContext, delivery_id: int | None, actor: str, as_json: bool) -> None:
    """Re-arm failed deliveries (or one by id) and send what is due now."""
    from surveillance.incidents.alerts.delivery import process_alerts

    store = app.store()
    now = utcnow()
    count = store.outbox.rearm(now=now, delivery_id=delivery_id, actor=actor)
    report = process_alerts(store, app.settings, now=now)
    if as_json:
        print_json({"rearmed": count, **vars_of(report)})
        return
    click.echo(
        f"re-armed {count} delivery(ies); delivered {report.delivered}, "
        f"retrying {report.retrying}, failed {report.failed}"
    )


@click.command("test")
@click.option("--channel", "channel_name", default=None, help="Only this channel.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def alerts_test(app: AppContext, channel_name: str | None, as_json: bool) -> None:
    """Send a test message to each configured channel (nothing is recorded).

    Alertmanager gets an alert named ``SurveillanceTest`` (severity ``low``, ending
    after 5 minutes), never one that looks like an incident.
    """
    from surveillance.incidents.alerts.channels import ChannelError, render, send
    from surveillance.incidents.alerts.messages import AlertMessage

    channels = [c for c in app.settings.alerts if channel_name in (None, c.name)]
    if not channels:
        known = ", ".join(c.name for c in app.settings.alerts) or "none"
        raise UsageError(f"no alert channel {channel_name or ''} configured (configured: {known})")
    now = datetime.now(UTC)
    message = AlertMessage(
        kind="test",
        alertname="SurveillanceTest",
        runbook_url=app.settings.service.runbook_url,
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
    outcome: dict[str, str] = {}
    for channel in channels:
        try:
            send(channel, render(channel, message, now))
            outcome[channel.name] = "delivered"
            if not as_json:
                click.echo(f"{channel.name} ({channel.type}): delivered")
        except ChannelError as exc:
            failures += 1
            outcome[channel.name] = f"failed: {exc}"
            if not as_json:
                click.echo(f"{channel.name} ({channel.type}): FAILED: {exc}", err=True)
    if as_json:
        print_json(outcome)
    if failures:
        raise click.ClickException(f"{failures} channel(s) failed")


@click.group()
def alerts() -> None:
    """Alert deliveries: the log, retries, channel tests."""


for _command in (alerts_list, alerts_retry, alerts_test):
    alerts.add_command(_command)


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    cli.add_command(alerts)
