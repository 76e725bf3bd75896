"""CLI commands for the PMS reports, Article 72 exports, Grafana dashboards.

``report pms``, ``report signoff``, ``export article72``, ``export verify``,
``dashboards export``, ``dashboards push``.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import click

from surveillance.cli.app import AppContext, group, pass_app, print_json


def _day(value: datetime) -> date:
    return value.date()


@click.command("pms")
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option(
    "--period",
    required=True,
    help="A quarter (2026Q3) or inclusive dates (2026-07-01..2026-09-30), UTC.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--no-evidently", is_flag=True, help="Do not attach the evidently data-drift report.")
@click.option("--by", "actor", default="cli", show_default=True, help="Recorded in the audit.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@pass_app
def report_pms(
    app: AppContext,
    model_name: str,
    period: str,
    out: Path,
    no_evidently: bool,
    actor: str,
    as_json: bool,
) -> None:
    """Write the PMS report (HTML + PDF) of one model for one period."""
    from surveillance.outputs.reports.pms import parse_period, write_pms_report

    parsed = parse_period(period)
    store = app.store()
    try:
        files = write_pms_report(
            store,
            model_name,
            parsed,
            out,
            settings=app.settings,
            attach_evidently=not no_evidently,
            actor=actor,
        )
    finally:
        store.close()
    if as_json:
        print_json(
            {
                "model": model_name,
                "period": parsed.describe(),
                "html": str(files.html),
                "pdf": str(files.pdf),
                "figures": [str(f) for f in files.figures],
                "evidently": files.evidently_note,
            }
        )
        return
    click.echo(f"PMS report {model_name} {parsed.describe()}:")
    click.echo(f"  {files.html}\n  {files.pdf}")
    click.echo(f"  {len(files.figures)} figure(s) in {files.html.parent / 'figures'}")
    click.echo(f"  evidently: {files.evidently_note}")


@click.command("signoff")
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option("--period", required=True, help="The report's period (2026Q3 or dates).")
@click.option("--by", "signed_by", required=True, help="Name and role of the signatory.")
@click.option("--conclusions", default=None, help="The signed conclusions (text).")
@click.option(
    "--conclusions-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The signed conclusions, from a UTF-8 text file.",
)
@click.option("--psur-reference", default=None, help="PSUR reference and version, e.g. PSUR-7 v1.")
@click.option(
    "--report",
    "report_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The signed PDF: its SHA-256 is recorded with the sign-off.",
)
@pass_app
def report_signoff(
    app: AppContext,
    model_name: str,
    period: str,
    signed_by: str,
    conclusions: str | None,
    conclusions_file: Path | None,
    psur_reference: str | None,
    report_file: Path | None,
) -> None:
    """Record a person's sign-off of a PMS report; the next report quotes its conclusions."""
    import hashlib

    from surveillance.core.errors import UsageError
    from surveillance.outputs.reports.pms import parse_period

    if (conclusions is None) == (conclusions_file is None):
        raise UsageError("give the conclusions with --conclusions TEXT or --conclusions-file FILE")
    if conclusions_file is not None:
        try:
            conclusions = conclusions_file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --conclusions-file {conclusions_file}: {exc}") from exc
    parsed = parse_period(period)
    digest = hashlib.sha256(report_file.read_bytes()).hexdigest() if report_file else None
    store = app.store()
    try:
        signed = store.reporting.sign_off(
            model_name,
            period_label=parsed.label,
            period_start=parsed.start,
            period_end=parsed.end,
            conclusions=conclusions or "",
            signed_by=signed_by,
            psur_reference=psur_reference,
            report_sha256=digest,
        )
    finally:
        store.close()
    click.echo(
        f"signed off the {signed.period_label} PMS report of {model_name} by {signed.signed_by} "
        f"at {signed.signed_at:%Y-%m-%d %H:%M} UTC (audited); the next report quotes it"
    )


@click.command("article72")
@click.option("--model", "model_name", required=True, help="Registered model name.")
@click.option(
    "--from", "first", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First day."
)
@click.option(
    "--to", "last", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Last day (incl.)."
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New or empty folder.")
@click.option(
    "--sign",
    "key_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Ed25519 private key from 'surveillance keys signing PATH' (or an HMAC key file): "
    "write a detached signature of the manifest.",
)
@click.option("--by", "actor", default="cli", show_default=True, help="Recorded in the audit.")
@click.option("--json", "as_json", is_flag=True, help="Print the export's id, files and hash.")
@pass_app
def export_article72_cmd(
    app: AppContext,
    model_name: str,
    first: datetime,
    last: datetime,
    out: Path,
    key_file: Path | None,
    actor: str,
    as_json: bool,
) -> None:
    """Write the Article 72 monitoring bundle (JSON + CSV + manifest), audited."""
    from surveillance.outputs.exports.article72 import export_article72

    store = app.store()
    try:
        bundle = export_article72(
            store,
            model_name,
            _day(first),
            _day(last),
            out,
            settings=app.settings,
            sign_key=key_file,
            actor=actor,
        )
    finally:
        store.close()
    if as_json:
        print_json(
            {
                "export_id": bundle.export_id,
                "out": str(out),
                "files": [str(f) for f in bundle.files],
                "manifest_sha256": bundle.manifest_sha256,
                "signature": bundle.signature,
            }
        )
        return
    click.echo(f"Article 72 export {bundle.export_id}: {len(bundle.files)} file(s) in {out}")
    click.echo(f"  manifest SHA-256 {bundle.manifest_sha256} (recorded in the audit log)")
    if bundle.signature is not None:
        click.echo(f"  signed: {bundle.signature}")


@click.command("verify")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--public-key",
    "public_key",
    type=click.Path(path_type=Path),
    default=None,
    help="The signer's Ed25519 public key (PATH.pub): check the signature.",
)
@click.option(
    "--key", "key_file", type=click.Path(path_type=Path), default=None, help="Shared HMAC key."
)
@click.option("--json", "as_json", is_flag=True)
def export_verify(
    directory: Path, public_key: Path | None, key_file: Path | None, as_json: bool
) -> None:
    """Re-hash an export against its manifest (and check its signature); exit 1 if not intact."""
    from surveillance.core.errors import UsageError
    from surveillance.outputs.exports.article72 import verify_export

    if public_key is not None and key_file is not None:
        raise UsageError("give --public-key (Ed25519) or --key (HMAC), not both")
    result = verify_export(directory, key_file=key_file, public_key=public_key)
    if as_json:
        print_json({**_as_dict(result), "ok": result.ok})
    else:
        for problem in result.problems:
            click.echo(f"FAIL {problem}")
        click.echo(
            f"{directory}: {'intact' if result.ok else 'NOT intact'}; "
            f"{result.files_checked} file(s) in the manifest; signature {result.signature}"
        )
    if not result.ok:
        raise SystemExit(1)


@click.command("export")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--db-host", default="postgres", show_default=True)
@click.option("--db-port", default=5432, show_default=True, type=int)
@click.option("--db-name", default="surveillance", show_default=True)
@click.option(
    "--db-user", default="surveillance_grafana", show_default=True, help="Read-only role."
)
def dashboards_export(
    directory: Path, db_host: str, db_port: int, db_name: str, db_user: str
) -> None:
    """Write Grafana provisioning files (data source + dashboards) into DIRECTORY."""
    from dashboards.provisioning import DataSource, export_provisioning

    written = export_provisioning(
        directory,
        DataSource(host=db_host, port=db_port, database=db_name, user=db_user),
    )
    for path in written:
        click.echo(str(path))


@click.command("push")
@click.option("--url", required=True, help="Grafana base URL, e.g. https://grafana:3000")
@click.option(
    "--token",
    envvar="GRAFANA_TOKEN",
    required=True,
    help="Service-account token (or $GRAFANA_TOKEN).",
)
@click.option("--folder", default="Surveillance", show_default=True)
@click.option(
    "--annotations/--no-annotations",
    default=True,
    show_default=True,
    help="Write drift events as annotations on the drift dashboard.",
)
@pass_app
def dashboards_push(app: AppContext, url: str, token: str, folder: str, annotations: bool) -> None:
    """Upload the dashboards and write drift events as annotations (Grafana HTTP API)."""
    from dashboards.provisioning import push

    store = app.store() if annotations else None
    try:
        result = push(url, token, folder=folder, store=store)
    finally:
        if store is not None:
            store.close()
    click.echo(
        f"pushed {len(result.dashboards)} dashboard(s) to {url} folder {folder!r}; "
        f"{result.annotations} annotation(s) written"
    )


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    report = group("report", "Reports for quality managers.")
    export = group("export", "Exports for regulators and notified bodies.")
    dashboards = group("dashboards", "Grafana dashboards for on-call engineers.")
    report.add_command(report_pms)
    report.add_command(report_signoff)
    export.add_command(export_article72_cmd)
    export.add_command(export_verify)
    dashboards.add_command(dashboards_export)
    dashboards.add_command(dashboards_push)


def _as_dict(result: object) -> dict[str, object]:
    import dataclasses

    if not dataclasses.is_dataclass(result) or isinstance(result, type):
        raise TypeError(result)
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}


__all__ = ["register"]
