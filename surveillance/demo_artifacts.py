"""What ``surveillance demo`` writes at the end: a PMS report and an Article 72 bundle.

The period is the whole simulated deployment (first to last prediction) unless
given, so the report shows the scanner update, its drift and its breach. The
Article 72 bundle is signed with the demo's Ed25519 key (``export-signing.key``,
made on first use) and verified with its public key right after it is written. The report's dead
letters, check runs and audit events are those concerning the demo's data (not
selected by wall-clock time), so they agree with the demo's own summary. About
2 s on a 2-core machine, plus ~3 s for evidently's attachment.
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

from surveillance.core.config import Settings
from surveillance.core.errors import UsageError
from surveillance.outputs.exports.article72 import MANIFEST_NAME, export_article72, verify_export
from surveillance.outputs.exports.signing import generate_signing_key
from surveillance.outputs.reports.pms import date_range, write_pms_report
from surveillance.store import Store


def write_demo_artifacts(
    store: Store,
    settings: Settings,
    out_dir: Path,
    model_name: str,
    *,
    first_day: date | None = None,
    last_day: date | None = None,
) -> list[Path]:
    """Write ``out_dir/report/`` and ``out_dir/article72/``; return the main files."""
    model = store.registry.model(model_name)
    span = store.checks.prediction_span(model.id)
    if span is None:
        raise UsageError(f"model {model_name!r} has no predictions yet: nothing to report")
    first = first_day or span[0].date()
    last = last_day or span[1].date()
    report = write_pms_report(
        store,
        model_name,
        date_range(first, last),
        out_dir / "report",
        settings=settings,
        actor="demo",
    )
    bundle_dir = out_dir / "article72"
    if bundle_dir.exists():
        if not (bundle_dir / MANIFEST_NAME).is_file():
            raise UsageError(f"{bundle_dir} exists and is not an Article 72 export; move it away")
        shutil.rmtree(bundle_dir)  # the previous demo run's bundle
    # the demo signs its bundle with its own Ed25519 key pair (made once, kept beside it)
    key = out_dir / "export-signing.key"
    if not key.exists():
        generate_signing_key(key)
    bundle = export_article72(
        store, model_name, first, last, bundle_dir, settings=settings, actor="demo", sign_key=key
    )
    check = verify_export(bundle_dir, public_key=key.with_name(key.name + ".pub"))
    if not check.ok:  # cannot happen unless the disk lies; say so loudly if it does
        raise UsageError(f"the demo's Article 72 bundle does not verify: {check.problems}")
    paths = [report.html, report.pdf, bundle.document, bundle.manifest]
    if report.evidently is not None:
        paths.append(report.evidently)
    return paths


__all__ = ["write_demo_artifacts"]
