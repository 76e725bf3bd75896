"""Intake once from files, and the dead letters it left."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from surveillance.cli.app import AppContext, pass_app, print_json
from surveillance.core.errors import UsageError
from surveillance.outputs.views import when


def _counts(c: Any) -> dict[str, int]:
    return {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document of results.")
@pass_app
def ingest(app: AppContext, paths: tuple[Path, ...], as_json: bool) -> None:
    """Ingest once: JSONL event files, CSV/FHIR diagnosis files, DICOM files and folders.

    Folders are searched for JSONL event files and DICOM files; diagnosis files
    (.csv, FHIR .json/.ndjson) are read when named directly.

    Exit status: 0 when every file was read (bad records become dead letters and
    are counted, they do not fail the run); 2 when a path does not exist or a
    whole file is unusable (empty CSV, a FHIR file that is not JSON, ...: named
    on stderr; the other files are still ingested); 1 on a runtime failure
    (database down).
    """
    from surveillance.intake.ingest import Ingestor
    from surveillance.intake.labels import ingest_label_file, is_label_file

    files: list[Path] = []
    label_files: list[Path] = []
    others: list[Path] = []
    for path in paths:
        if not path.exists() and not path.is_symlink():
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
    results: list[dict[str, Any]] = []
    refused: list[str] = []
    store = app.store() if files or label_files else None
    ingestor = Ingestor.for_settings(store, app.pseudonymizer(), app.settings) if store else None
    try:
        for file in files + label_files:
            assert ingestor is not None
            try:
                if file in label_files:
                    c = ingest_label_file(ingestor, file)
                else:
                    c = ingestor.ingest_jsonl(file)
            except UsageError as exc:
                refused.append(f"{file}: {exc}")
                results.append({"path": str(file), "error": str(exc)})
                if not as_json:
                    click.echo(f"error: {file}: {exc}", err=True)
                continue
            results.append({"path": str(file), **_counts(c)})
            if as_json:
                continue
            if file in label_files:
                click.echo(
                    f"{file}: {c.diagnoses_new} diagnoses new ({c.diagnoses_duplicate} already "
                    f"stored), {c.conflicts} conflict(s), {c.dead_letters} dead letter(s)"
                )
            else:
                click.echo(
                    f"{file}: {c.predictions_new} prediction rows new ({c.predictions_duplicate} "
                    f"already stored), {c.metadata} headers, {c.diagnoses_new} diagnoses new "
                    f"({c.diagnoses_duplicate} already stored), {c.conflicts} conflict(s), "
                    f"{c.dead_letters} dead letter(s)"
                )
    finally:
        if store is not None:
            store.close()
    if others:
        from surveillance.intake.dicom import ingest_dicom_paths

        results.extend(ingest_dicom_paths(app, others, quiet=as_json))
    if as_json:
        print_json({"results": results, "refused": len(refused)})
    if refused:
        raise UsageError(
            f"{len(refused)} file(s) refused as a whole (the others were ingested): "
            + "; ".join(refused)
        )


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
