"""What ``surveillance demo`` writes at the end: a PMS report and an Article 72 bundle.

The period is the whole simulated deployment (first to last prediction) unless
given, so the report shows the scanner update, its drift and its breach. The
Article 72 bundle is verified right after it is written. About 2 s on a 2-core
machine (plus ~3 s when evidently is installed).
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

from surveillance.core.config import Settings
from surveillance.core.errors import UsageError
from surveillance.outputs.exports.article72 import MANIFEST_NAME, export_article72, verify_export
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
    bundle = export_article72(
        store, model_name, first, last, bundle_dir, settings=settings, actor="demo"
    )
    check = verify_export(bundle_dir)
    if not check.ok:  # cannot happen unless the disk lies; say so loudly if it does
        raise UsageError(f"the demo's Article 72 bundle does not verify: {check.problems}")
    paths = [report.html, report.pdf, bundle.document, bundle.manifest]
    if report.evidently is not None:
        paths.append(report.evidently)
    return paths


__all__ = ["write_demo_artifacts"]
