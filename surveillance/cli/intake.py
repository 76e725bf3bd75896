"""Intake once from files, and the dead letters it left."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import AppContext, pass_app, print_json
from surveillance.core.errors import UsageError
from surveillance.outputs.views import when


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@pass_app
def ingest(app: AppContext, paths: tuple[Path, ...]) -> None:
    """Ingest once: JSONL event files, CSV/FHIR diagnosis files, DICOM files and folders.

    Folders are searched for JSONL event files and DICOM files; diagnosis files
    (.csv, FHIR .json/.ndjson) are read when named directly.
    """
    from surveillance.intake.ingest import Ingestor
    from surveillance.intake.labels import ingest_label_file, is_label_file

    files: list[Path] = []
    label_files: list[Path] = []
    others: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.jsonl") if p.is_file()))
            others.append(path)
        elif path.suffix == ".jsonl":
            files.append(path)
        elif is_label_file(path):
            label_files.append(path)
        else:
            others.append(path)
    store = app.store() if files or label_files else None
    ingestor = Ingestor(store, app.pseudonymizer()) if store else None
    for file in files:
        assert ingestor is not None
        c = ingestor.ingest_jsonl(file)
        click.echo(
            f"{file}: {c.predictions_new} prediction rows new ({c.predictions_duplicate} "
            f"already stored), {c.metadata} headers, {c.diagnoses_new} diagnoses new "
            f"({c.diagnoses_duplicate} already stored), {c.dead_letters} dead letter(s)"
        )
    for file in label_files:
        assert ingestor is not None
        c = ingest_label_file(ingestor, file)
        click.echo(
            f"{file}: {c.diagnoses_new} diagnoses new ({c.diagnoses_duplicate} already "
            f"stored), {c.dead_letters} dead letter(s)"
        )
    if store is not None:
        store.close()
    if others:
        from surveillance.intake.dicom import ingest_dicom_paths

        ingest_dicom_paths(app, others)


@click.group()
def deadletters() -> None:
    """Records that were rejected, with the reason."""


@deadletters.command("list")
@click.option("--all", "include_replayed", is_flag=True, help="Include replayed ones.")
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def deadletters_list(app: AppContext, include_replayed: bool, limit: int, as_json: bool) -> None:
    """List dead letters: where each came from and why it was rejected."""
    items = app.store().events.dead_letters(include_replayed=include_replayed, limit=limit)
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("no dead letters")
        return
    table = Table("id", "received", "kind", "position", "reason", title="Dead letters")
    for d in items:
        table.add_row(str(d.id), when(d.received_at), d.kind or "?", d.position, d.reason)
    Console(width=200).print(table)


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    cli.add_command(ingest)
    cli.add_command(deadletters)
