"""QMS records the PMS report (PSUR) needs: field safety corrective actions, complaints.

``surveillance fsca add|list`` records FSCAs one by one, as a quality manager
opens and closes them; ``surveillance complaints import FILE.csv`` takes the
complaint-handling system's export (columns ``reference, received_at, category,
serious, summary`` and optionally ``outcome``; no patient data), idempotent by
reference, so re-importing the next month's export updates rather than doubles.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from surveillance.cli.app import AppContext, group, pass_app, print_json


def _utc_day(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


@click.command("add")
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--reference", required=True, help="The FSCA's reference in the QMS.")
@click.option("--title", required=True, help="What the action does, in words.")
@click.option(
    "--started", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Start day (UTC)."
)
@click.option(
    "--closed", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Closing day, if closed."
)
@click.option("--notice", default=None, help="Reference of the field safety notice, if any.")
@click.option("--by", "actor", required=True, help="Who records it (audited).")
@pass_app
def fsca_add(
    app: AppContext,
    model_name: str,
    reference: str,
    title: str,
    started: datetime,
    closed: datetime | None,
    notice: str | None,
    actor: str,
) -> None:
    """Record a field safety corrective action (again with the same reference: update it)."""
    store = app.store()
    try:
        fsca = store.reporting.add_fsca(
            model_name,
            reference=reference,
            title=title,
            started_at=started.replace(tzinfo=UTC),
            closed_at=_utc_day(closed),
            field_safety_notice=notice,
            actor=actor,
        )
    finally:
        store.close()
    click.echo(f"FSCA {fsca.reference} ({fsca.status}) recorded for {model_name}")


@click.command("list")
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def fsca_list(app: AppContext, model_name: str, as_json: bool) -> None:
    """The model's field safety corrective actions."""
    store = app.store()
    try:
        items = store.reporting.fscas(store.registry.model(model_name).id)
    finally:
        store.close()
    if as_json:
        print_json(
            [
                {
                    "reference": f.reference,
                    "title": f.title,
                    "status": f.status,
                    "started_at": f.started_at.isoformat(),
                    "closed_at": f.closed_at.isoformat() if f.closed_at else None,
                    "field_safety_notice": f.field_safety_notice,
                    "recorded_by": f.recorded_by,
                }
                for f in items
            ]
        )
        return
    if not items:
        click.echo(f"no FSCA recorded for {model_name}")
    for f in items:
        closed = f" closed {f.closed_at:%Y-%m-%d}" if f.closed_at else ""
        click.echo(f"{f.reference}  {f.status:6}  {f.started_at:%Y-%m-%d}{closed}  {f.title}")


@click.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--by", "actor", default="cli", show_default=True, help="Recorded in the audit.")
@pass_app
def complaints_import(app: AppContext, file: Path, model_name: str, actor: str) -> None:
    """Import complaints and user feedback from a QMS CSV export (idempotent by reference)."""
    store = app.store()
    try:
        new, updated = store.reporting.import_complaints(model_name, file, actor=actor)
    finally:
        store.close()
    click.echo(f"{file.name}: {new} new complaint(s), {updated} updated, for {model_name}")


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    fsca = group("fsca", "Field safety corrective actions (for the PSUR).")
    complaints = group("complaints", "Complaints and user feedback (for the PSUR).")
    fsca.add_command(fsca_add)
    fsca.add_command(fsca_list)
    complaints.add_command(complaints_import)


__all__ = ["register"]
