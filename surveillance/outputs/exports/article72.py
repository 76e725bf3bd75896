"""The Article 72 post-market monitoring export for regulators and notified bodies.

``export_article72(store, model, first_day, last_day, out_dir)`` writes a bundle::

    out_dir/article72.json     the monitoring document, valid against article72.schema.json
    out_dir/*.csv              the underlying figures, one table per file
    out_dir/article72.schema.json  the schema it was validated against (a copy)
    out_dir/SHA256SUMS         the hashes of the files above, for ``sha256sum -c``
    out_dir/manifest.json      SHA-256 and size of every file above, SHA256SUMS included
    out_dir/manifest.json.sig  optional: Ed25519 (or HMAC) signature of manifest.json

Integrity, in order: the audit chain is verified first and a broken chain
refuses the export (:class:`ExportRefused`); the document is validated against
the schema before anything is written; the manifest hashes every file; then an
``export.article72`` audit event records the export id and the manifest's
SHA-256, so the database proves which bundle it produced. ``verify_export``
re-hashes a bundle against its manifest (and the signature, given the key).

Signatures (:mod:`surveillance.outputs.exports.signing`): ``--sign PATH`` with an
Ed25519 private key from ``surveillance keys signing PATH`` signs manifest.json;
``export verify DIR --public-key PATH.pub`` checks it with the public key only.
As the manifest hashes every other file, one changed byte anywhere fails the
verification. An HMAC key file is still accepted (``--key`` to verify), but it
proves only that the signer held the shared key.

The document also names the device (UDI-DI, Basic UDI-DI, class, notified body,
certificate), the vigilance reports made for each incident, the audit chain's
head and count, and the monitoring plan it was produced under (the settings and
their SHA-256). Dead letters, job runs and audit events are those concerning the
period's data (see :mod:`surveillance.store.reporting`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jsonschema

from surveillance.core.config import Settings
from surveillance.core.errors import SurveillanceError, UsageError
from surveillance.outputs.exports import signing
from surveillance.outputs.rules import DRIFT_RULE
from surveillance.store import DriftCheck, ModelInfo, PerformanceCheck, Store
from surveillance.store import reporting as rs
from surveillance.store.domain import JobRun
from surveillance.store.incidents import deadline_state
from surveillance.store.types import utcnow

SCHEMA_NAME = "article72.schema.json"
DOCUMENT_NAME = "article72.json"
MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
SIGNATURE_NAME = "manifest.json.sig"
NOT_IN_MANIFEST = {MANIFEST_NAME, SIGNATURE_NAME}


class ExportRefused(SurveillanceError):
    """The export cannot be produced with integrity (e.g. the audit chain is broken)."""

    exit_code = 1


@dataclass(frozen=True, slots=True)
class ExportBundle:
    directory: Path
    export_id: str
    document: Path
    manifest: Path
    signature: Path | None
    files: tuple[Path, ...]
    manifest_sha256: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    directory: Path
    files_checked: int
    problems: tuple[str, ...]
    signature: str  # "valid (Ed25519, key id ...)", "INVALID", "not checked (no key)", "absent"

    @property
    def ok(self) -> bool:
        return not self.problems


# ---- schema -----------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    text = resources.files("surveillance.outputs.exports").joinpath(SCHEMA_NAME).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()

    @checker.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:  # jsonschema ships no RFC 3339 checker by default
        if not isinstance(value, str):
            return True
        parsed = datetime.fromisoformat(value)
        return "T" in value and parsed.tzinfo is not None

    return checker


def validate_document(document: dict[str, Any]) -> list[str]:
    """Every schema violation, as 'path: message' lines (empty when valid)."""
    validator = jsonschema.Draft202012Validator(load_schema(), format_checker=_format_checker())
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


# ---- helpers -------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _generator_version() -> str:
    try:
        return version("surveillance")
    except PackageNotFoundError:
        return "unknown"


def _stratum(kind: str, value: str) -> dict[str, str]:
    return {"kind": kind, "value": value}


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(
                ["" if v is None else _iso(v) if isinstance(v, datetime) else v for v in row]
            )
            count += 1
    return count


def _deadlines(record: rs.IncidentRecord, now: datetime) -> dict[str, dict[str, Any]]:
    """Each authority's deadline judged from that authority's own report."""
    i = record.incident
    reports = {v.authority: v for v in record.reports}
    due = {"eu-mdr": i.mdr_deadline_at, "fda": i.fda_deadline_at}
    return {
        authority.replace("-", "_"): {
            "due": _iso(at),
            "status": deadline_state(
                authority, at, reports.get(authority), i.vigilance_class, now
            ).status,
        }
        for authority, at in due.items()
    }


# ---- the document -----------------------------------------------------------------------


def _indicators(model: ModelInfo, settings: Settings) -> list[dict[str, Any]]:
    perf = settings.performance
    indicators: list[dict[str, Any]] = []
    for b in model.baselines:
        indicators.append(
            {
                "id": f"performance:{b.finding}:{b.metric}:{b.stratum}",
                "kind": "performance",
                "description": f"{b.metric} for {b.finding} against the clearance baseline",
                "method": (
                    f"{b.metric} with {perf.confidence:.0%} CI (Wilson for proportions, DeLong "
                    f"for AUROC) on {perf.window_days}-day windows judged {perf.maturity_days} "
                    f"days after they end; strata {', '.join(perf.strata)}; at least "
                    f"{perf.min_samples} labelled cases"
                ),
                "threshold": (
                    f"breach when the upper CI bound is below {b.alert_limit}; warning when "
                    "only the point estimate is"
                ),
                "finding": b.finding,
                "metric": b.metric,
                "baseline": {
                    "stratum": b.stratum,
                    "value": b.value,
                    "ci_lower": b.ci_lower,
                    "ci_upper": b.ci_upper,
                    "alert_limit": b.alert_limit,
                    "source_document": b.source_document,
                },
            }
        )
    drift = settings.drift
    tolerance = drift.min_effect

    def common(min_effect: float, effect: str) -> dict[str, Any]:
        return {
            "kind": "drift",
            "threshold": (
                f"drift when the p-value adjusted across the window's tests ({drift.correction}) "
                f"is below {drift.alpha} and the effect size ({effect}) reaches the tolerance "
                f"{min_effect}; significant but smaller is 'below tolerance' and never an "
                f"incident; an incident after {drift.persistence_windows} consecutive drifted "
                "windows"
            ),
            "alpha": drift.alpha,
            "persistence_windows": drift.persistence_windows,
            "min_effect": min_effect,
            "effect_name": effect,
        }

    window = (
        f"{drift.window_days}-day windows vs the first {drift.reference_days} days of "
        f"deployment (frozen reference), strata {', '.join(drift.strata)}, at least "
        f"{drift.min_samples} cases"
    )
    for finding in model.findings:
        indicators.append(
            {
                **common(tolerance.score, "ks_d"),
                "id": f"drift:score:{finding}",
                "description": f"distribution of the model's {finding} scores",
                "method": f"two-sample Kolmogorov-Smirnov on {window}",
            }
        )
    indicators.append(
        {
            **common(tolerance.acquisition, "ks_d"),
            "id": "drift:acquisition",
            "description": "numeric acquisition parameters (kVp, pixel spacing, slice thickness)",
            "method": f"per-feature KS with Bonferroni correction on {window}",
        }
    )
    indicators.append(
        {
            **common(tolerance.metadata, "cramers_v"),
            "id": "drift:metadata",
            "description": "categorical header fields (software version, kernel, view, sex, "
            "age band, scanner mix)",
            "method": f"chi-squared per field on {window}",
        }
    )
    return indicators


def _data_sources() -> list[dict[str, str]]:
    return [
        {"name": "predictions", "description": "the deployed model's output scores per study"},
        {
            "name": "dicom-metadata",
            "description": "allow-listed DICOM header attributes (device and acquisition "
            "fields, sex, age band); identifiers only as keyed HMAC pseudonyms",
        },
        {
            "name": "diagnoses",
            "description": "clinician-confirmed ground truth (pathology, consensus, report, "
            "follow-up), arriving after the prediction",
        },
    ]


def _drift_results(checks: Sequence[DriftCheck]) -> list[dict[str, Any]]:
    by_stratum: dict[tuple[str, str], list[DriftCheck]] = {}
    for c in checks:
        if c.status == "drift":
            by_stratum.setdefault((c.stratum_kind, c.stratum_value), []).append(c)
    results = []
    for (kind, value), hits in sorted(by_stratum.items()):
        ps = [h.p_value for h in hits if h.p_value is not None]
        adjusted = [h.p_adjusted for h in hits if h.p_adjusted is not None]
        results.append(
            {
                "stratum": _stratum(kind, value),
                "signals": sorted({h.signal for h in hits}),
                "first_window_start": _iso(min(h.window_start for h in hits)),
                "last_window_end": _iso(max(h.window_end for h in hits)),
                "windows": len({h.window_start for h in hits}),
                "min_p_value": min(ps) if ps else None,
                "min_p_adjusted": min(adjusted) if adjusted else None,
                "effects": _effects(hits),
            }
        )
    return results


def _effects(checks: Sequence[DriftCheck]) -> list[dict[str, Any]]:
    """Per signal: the largest stored effect, its measure and tolerance, smallest adjusted p."""
    by_signal: dict[str, list[DriftCheck]] = {}
    for c in checks:
        by_signal.setdefault(c.signal, []).append(c)
    effects = []
    for signal, mine in sorted(by_signal.items()):
        sized = [c for c in mine if c.effect_size is not None]
        largest = max(sized, key=lambda c: c.effect_size or 0.0) if sized else None
        adjusted = [c.p_adjusted for c in mine if c.p_adjusted is not None]
        effects.append(
            {
                "signal": signal,
                "effect_name": largest.effect_name if largest else None,
                "max_effect_size": largest.effect_size if largest else None,
                "min_effect": largest.min_effect if largest else None,
                "min_p_adjusted": min(adjusted) if adjusted else None,
            }
        )
    return effects


def _below_tolerance(checks: Sequence[DriftCheck]) -> dict[str, Any]:
    """The significant checks that stayed below their tolerance (never an incident)."""
    below = [c for c in checks if c.status == "below_tolerance"]
    return {
        "rule": DRIFT_RULE,
        "checks": len(below),
        "strata": len({(c.stratum_kind, c.stratum_value) for c in below}),
        "by_signal": _effects(below),
    }


def _performance_results(checks: Sequence[PerformanceCheck]) -> list[dict[str, Any]]:
    return [
        {
            "check_id": c.id,
            "finding": c.finding,
            "metric": c.metric,
            "stratum": _stratum(c.stratum_kind, c.stratum_value),
            "window_start": _iso(c.window_start),
            "window_end": _iso(c.window_end),
            "status": c.status,
            "value": c.value,
            "ci_lower": c.ci_lower,
            "ci_upper": c.ci_upper,
            "n": c.n,
            "labelled_fraction": c.labelled_fraction,
            "baseline_value": c.baseline_value,
            "alert_limit": c.alert_limit,
        }
        for c in checks
        if not c.estimated
    ]


def _incidents(records: Sequence[rs.IncidentRecord], now: datetime) -> list[dict[str, Any]]:
    out = []
    for r in records:
        i = r.incident
        out.append(
            {
                "id": i.id,
                "title": i.title,
                "signal_kind": i.signal_kind,
                "signal": i.signal,
                "stratum": _stratum(i.stratum_kind, i.stratum_value),
                "severity": i.severity,
                "status": i.status,
                "summary": i.summary,
                "opened_at": _iso(i.opened_at),
                "aware_at": _iso(i.aware_at),
                "acknowledged_at": _iso(i.acknowledged_at),
                "closed_at": _iso(i.closed_at),
                "resolution": i.resolution,
                "vigilance_class": i.vigilance_class,
                "remedial_action": r.remedial_action,
                "reported_at": _iso(r.reported_at),
                "deadlines": _deadlines(r, now),
                "capa_reference": i.capa_reference,
                "vigilance_reports": [
                    {
                        "authority": v.authority,
                        "reference": v.reference,
                        "reported_at": _iso(v.reported_at),
                        "recorded_by": v.recorded_by,
                    }
                    for v in r.reports
                ],
                "actions": [
                    {
                        "at": _iso(e.at),
                        "kind": e.kind,
                        "actor": e.actor,
                        "note": e.note,
                        "drift_check_id": e.drift_check_id,
                        "performance_check_id": e.performance_check_id,
                    }
                    for e in i.events
                ],
            }
        )
    return out


def _write_tables(
    out: Path,
    model: ModelInfo,
    coverage: Sequence[rs.CoverageRow],
    drift: Sequence[DriftCheck],
    performance: Sequence[PerformanceCheck],
    incidents: Sequence[rs.IncidentRecord],
    runs: Sequence[JobRun],
    audit: Sequence[rs.AuditEntry],
) -> list[dict[str, Any]]:
    tables: list[tuple[str, str, Sequence[str], Iterable[Sequence[Any]]]] = [
        (
            "baselines.csv",
            "clearance baseline figures the performance indicators are judged against",
            (
                "finding",
                "metric",
                "stratum",
                "value",
                "ci_lower",
                "ci_upper",
                "alert_limit",
                "source_document",
            ),
            [
                (
                    b.finding,
                    b.metric,
                    b.stratum,
                    b.value,
                    b.ci_lower,
                    b.ci_upper,
                    b.alert_limit,
                    b.source_document,
                )
                for b in model.baselines
            ],
        ),
        (
            "volumes.csv",
            "studies scored and labelled per site and scanner (first row: all)",
            ("site", "scanner", "studies", "labelled", "median_days_to_label"),
            [(r.site, r.scanner, r.studies, r.labelled, r.median_days_to_label) for r in coverage],
        ),
        (
            "drift_checks.csv",
            "every drift check whose window overlaps the period",
            (
                "check_id",
                "detector",
                "signal",
                "stratum_kind",
                "stratum_value",
                "window_start",
                "window_end",
                "status",
                "statistic",
                "p_value",
                "threshold",
                "n_reference",
                "n_window",
                "p_adjusted",
                "effect_name",
                "effect_size",
                "min_effect",
            ),
            [
                (
                    c.id,
                    c.detector,
                    c.signal,
                    c.stratum_kind,
                    c.stratum_value,
                    c.window_start,
                    c.window_end,
                    c.status,
                    c.statistic,
                    c.p_value,
                    c.threshold,
                    c.n_reference,
                    c.n_window,
                    c.p_adjusted,
                    c.effect_name,
                    c.effect_size,
                    c.min_effect,
                )
                for c in drift
            ],
        ),
        (
            "performance_checks.csv",
            "every performance check whose window overlaps the period",
            (
                "check_id",
                "finding",
                "metric",
                "stratum_kind",
                "stratum_value",
                "window_start",
                "window_end",
                "estimated",
                "status",
                "value",
                "ci_lower",
                "ci_upper",
                "n",
                "labelled_fraction",
                "baseline_value",
                "alert_limit",
            ),
            [
                (
                    c.id,
                    c.finding,
                    c.metric,
                    c.stratum_kind,
                    c.stratum_value,
                    c.window_start,
                    c.window_end,
                    c.estimated,
                    c.status,
                    c.value,
                    c.ci_lower,
                    c.ci_upper,
                    c.n,
                    c.labelled_fraction,
                    c.baseline_value,
                    c.alert_limit,
                )
                for c in performance
            ],
        ),
        (
            "incidents.csv",
            "incidents open during the period or with evidence in it",
            (
                "incident_id",
                "title",
                "signal_kind",
                "signal",
                "stratum_kind",
                "stratum_value",
                "severity",
                "status",
                "opened_at",
                "aware_at",
                "closed_at",
                "vigilance_class",
                "mdr_deadline_at",
                "fda_deadline_at",
                "reported_at",
                "capa_reference",
            ),
            [
                (
                    r.incident.id,
                    r.incident.title,
                    r.incident.signal_kind,
                    r.incident.signal,
                    r.incident.stratum_kind,
                    r.incident.stratum_value,
                    r.incident.severity,
                    r.incident.status,
                    r.incident.opened_at,
                    r.incident.aware_at,
                    r.incident.closed_at,
                    r.incident.vigilance_class,
                    r.incident.mdr_deadline_at,
                    r.incident.fda_deadline_at,
                    r.reported_at,
                    r.incident.capa_reference,
                )
                for r in incidents
            ],
        ),
        (
            "incident_events.csv",
            "incident timelines: actions taken and evidence attached",
            (
                "incident_id",
                "at",
                "kind",
                "actor",
                "note",
                "drift_check_id",
                "performance_check_id",
            ),
            [
                (
                    r.incident.id,
                    e.at,
                    e.kind,
                    e.actor,
                    e.note,
                    e.drift_check_id,
                    e.performance_check_id,
                )
                for r in incidents
                for e in r.incident.events
            ],
        ),
        (
            "job_runs.csv",
            "analyses performed: each scheduled check run of this model in the period",
            ("job_id", "scheduled_for", "started_at", "finished_at", "status", "error"),
            [
                (j.job_id, j.scheduled_for, j.started_at, j.finished_at, j.status, j.error)
                for j in runs
            ],
        ),
        (
            "audit_events.csv",
            "the hash-chained audit events of the period (all models)",
            ("seq", "at", "actor", "action", "entity", "entity_id", "hash"),
            [(a.seq, a.at, a.actor, a.action, a.entity, a.entity_id, a.hash) for a in audit],
        ),
    ]
    described = []
    for name, description, header, rows in tables:
        count = _write_csv(out / name, header, rows)
        described.append({"file": name, "rows": count, "description": description})
    return described


def build_document(
    store: Store,
    model: ModelInfo,
    first_day: date,
    last_day: date,
    *,
    settings: Settings,
    export_id: str,
    now: datetime,
    audit_events: int,
    audit_head: str | None,
    out: Path,
) -> dict[str, Any]:
    """Gather the period's figures, write the CSV tables into ``out`` and return the JSON."""
    start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    end = datetime(last_day.year, last_day.month, last_day.day, tzinfo=UTC) + timedelta(days=1)
    studies = store.reporting.studies_in_period(model.id, start, end)
    coverage = rs.label_coverage(studies)
    drift = store.checks.drift(model.id, start, end)
    performance = store.checks.performance(model.id, start, end)
    incidents = store.reporting.incidents_in_period(model.id, start, end)
    runs = store.reporting.job_runs_in_period(model.name, start, end)
    letters = store.reporting.dead_letters_in_period(model.id, start, end)
    audit = store.reporting.audit_entries(
        start,
        end,
        model_name=model.name,
        incident_ids=[r.incident.id for r in incidents],
        job_run_ids=[r.id for r in runs],
        dead_letter_ids=[letter[0] for letter in letters],
    )
    rejected: dict[str, int] = {}
    for _, kind, _, _ in letters:
        rejected[kind] = rejected.get(kind, 0) + 1
    fscas = store.reporting.fscas(model.id, start, end)
    complaints = store.reporting.complaints(model.id, start, end)
    plan = {
        "drift": settings.drift.model_dump(mode="json"),
        "performance": settings.performance.model_dump(mode="json"),
        "schedules": settings.schedules.model_dump(mode="json"),
    }
    plan_sha = hashlib.sha256(
        json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    tables = _write_tables(out, model, coverage, drift, performance, incidents, runs, audit)
    by_signal = []
    for signal in sorted({c.signal for c in drift}):
        mine = [c for c in drift if c.signal == signal]
        by_signal.append(
            {
                "signal": signal,
                "detector": mine[0].detector,
                "checks": len(mine),
                "drifted": sum(c.status == "drift" for c in mine),
                "below_tolerance": sum(c.status == "below_tolerance" for c in mine),
                "insufficient_data": sum(c.status == "insufficient_data" for c in mine),
            }
        )
    schedules = settings.schedules.model_dump()
    return {
        "schema_version": "1.2",
        "export": {
            "id": export_id,
            "generated_at": _iso(now),
            "generator": {"name": "surveillance", "version": _generator_version()},
            "period": {"from": first_day.isoformat(), "to": last_day.isoformat()},
        },
        "device": {
            "model": model.name,
            "version": model.version,
            "manufacturer": model.manufacturer,
            "intended_use": " ".join(model.intended_use.split()),
            "findings": dict(model.findings),
            "udi_di": model.udi_di,
            "basic_udi_di": model.basic_udi_di,
            "device_class": model.device_class,
            "notified_body": model.notified_body,
            "certificate": model.certificate,
        },
        "monitoring_plan": {
            "data_sources": _data_sources(),
            "indicators": _indicators(model, settings),
            "schedules": {k: str(v) for k, v in schedules.items()},
            "stratification": sorted(set(settings.drift.strata) | set(settings.performance.strata)),
            "plan_sha256": plan_sha,
            "settings": plan,
        },
        "data_collected": {
            "studies": len(studies),
            "labelled_studies": coverage[0].labelled if coverage else 0,
            "sites": len({s.site for s in studies}),
            "scanners": len({s.scanner for s in studies}),
            "rejected_records": rejected,
            "complaints": len(complaints),
            "fsca": len(fscas),
            "by_site_scanner": [
                {
                    "site": r.site,
                    "scanner": r.scanner,
                    "studies": r.studies,
                    "labelled": r.labelled,
                    "median_days_to_label": r.median_days_to_label,
                }
                for r in coverage[1:]
            ],
        },
        "analyses_performed": {
            "job_runs": len(runs),
            "failed_job_runs": sum(r.status == "failed" for r in runs),
            "drift_checks": len(drift),
            "drift_below_tolerance": sum(c.status == "below_tolerance" for c in drift),
            "performance_checks": len(performance),
            "by_signal": by_signal,
        },
        "results": {
            "drift": _drift_results(drift),
            "drift_below_tolerance": _below_tolerance(drift),
            "performance": _performance_results(performance),
        },
        "incidents": _incidents(incidents, now),
        "integrity": {
            "audit_chain": {
                "verified": True,
                "events": audit_events,
                "head_hash": audit_head,
                "verified_at": _iso(now),
                "events_in_period": len(audit),
            }
        },
        "tables": tables,
    }


# ---- manifest and signature ---------------------------------------------------------------


def _manifest(out: Path, export_id: str, now: datetime) -> dict[str, Any]:
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name not in NOT_IN_MANIFEST)
    return {
        "export_id": export_id,
        "generated_at": _iso(now),
        "algorithm": "SHA-256",
        "files": [
            {"path": p.name, "sha256": _sha256_file(p), "bytes": p.stat().st_size} for p in files
        ],
    }


# ---- public entry points -----------------------------------------------------------------


def export_article72(
    store: Store,
    model_name: str,
    first_day: date,
    last_day: date,
    out_dir: Path,
    *,
    settings: Settings | None = None,
    sign_key: Path | None = None,
    actor: str = "export",
    now: datetime | None = None,
) -> ExportBundle:
    """Verify the audit chain, write the bundle into ``out_dir`` (new or empty), audit it."""
    if last_day < first_day:
        raise UsageError(f"--to {last_day} is before --from {first_day}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError(
            f"{out_dir} is not empty: an export goes into a new folder so that its manifest "
            "covers exactly its own files"
        )
    if sign_key is not None:  # fail on a bad key before anything is written
        signing.sign(b"", sign_key)
    model = store.registry.model(model_name)
    report = store.audit.verify()
    if not report.ok:
        shown = "; ".join(report.problems[:3])
        more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        raise ExportRefused(
            f"audit chain is broken, export refused: {shown}{more}. Investigate with "
            "'surveillance audit verify'; an export must not certify figures whose "
            "provenance cannot be shown"
        )
    now = now or utcnow()
    export_id = str(uuid.uuid4())
    out_dir.mkdir(parents=True, exist_ok=True)
    document = build_document(
        store,
        model,
        first_day,
        last_day,
        settings=settings or Settings(),
        export_id=export_id,
        now=now,
        audit_events=report.events,
        audit_head=report.head_hash,
        out=out_dir,
    )
    problems = validate_document(document)
    if problems:  # our own output: a bug, never the user's fault
        raise ExportRefused(
            f"the export document does not match {SCHEMA_NAME} (a bug, please report it): "
            + "; ".join(problems[:5])
        )
    doc_path = out_dir / DOCUMENT_NAME
    doc_path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    (out_dir / SCHEMA_NAME).write_text(json.dumps(load_schema(), indent=2) + "\n", "utf-8")
    data_files = sorted(p for p in out_dir.iterdir() if p.is_file())
    (out_dir / SUMS_NAME).write_text(
        "".join(f"{_sha256_file(p)}  {p.name}\n" for p in data_files), "utf-8"
    )
    manifest = _manifest(out_dir, export_id, now)  # covers SHA256SUMS too
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    manifest_path = out_dir / MANIFEST_NAME
    manifest_path.write_bytes(manifest_bytes)
    signature_path: Path | None = None
    signature: dict[str, str] | None = None
    if sign_key is not None:
        signature = signing.sign(manifest_bytes, sign_key)
        signature_path = out_dir / SIGNATURE_NAME
        signature_path.write_text(json.dumps(signature, indent=2) + "\n")
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    store.audit.record(
        actor=actor,
        action="export.article72",
        entity="model",
        entity_id=model.name,
        detail={
            "export_id": export_id,
            "from": first_day.isoformat(),
            "to": last_day.isoformat(),
            "manifest_sha256": manifest_sha,
            "files": len(manifest["files"]),
            "signed": signature is not None,
            "signature": None
            if signature is None
            else {"algorithm": signature["algorithm"], "key_id": signature["key_id"]},
        },
    )
    return ExportBundle(
        directory=out_dir,
        export_id=export_id,
        document=doc_path,
        manifest=manifest_path,
        signature=signature_path,
        files=tuple(out_dir / f["path"] for f in manifest["files"]),
        manifest_sha256=manifest_sha,
    )


def verify_export(
    directory: Path, *, key_file: Path | None = None, public_key: Path | None = None
) -> VerifyResult:
    """Re-hash every file against the manifest; check the schema and, given a key, the signature.

    ``public_key``: the signer's Ed25519 public key (``PATH.pub``); ``key_file``: a
    shared HMAC key. SHA256SUMS is checked against the files and the manifest.
    """
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest_bytes = manifest_path.read_bytes()
        manifest = json.loads(manifest_bytes)
        listed = {f["path"]: f for f in manifest["files"]}
    except FileNotFoundError as exc:
        raise UsageError(
            f"{directory} has no {MANIFEST_NAME}: is it an Article 72 export?"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        return VerifyResult(directory, 0, (f"{MANIFEST_NAME} is unreadable: {exc}",), "absent")
    problems: list[str] = []
    for name, entry in sorted(listed.items()):
        path = directory / name
        if Path(name).name != name:
            problems.append(f"{name}: manifest names a path outside the bundle")
        elif not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
        elif _sha256_file(path) != entry.get("sha256"):
            problems.append(f"{name}: SHA-256 does not match the manifest (modified?)")
    for path in sorted(directory.iterdir()):
        if path.name not in listed and path.name not in NOT_IN_MANIFEST:
            problems.append(f"{path.name}: present but not in the manifest (added?)")
    doc_path = directory / DOCUMENT_NAME
    if doc_path.is_file():
        try:
            schema_problems = validate_document(json.loads(doc_path.read_text("utf-8")))
        except ValueError as exc:
            schema_problems = [f"not valid JSON: {exc}"]
        problems += [f"{DOCUMENT_NAME}: {p}" for p in schema_problems[:10]]
    else:
        problems.append(f"{DOCUMENT_NAME}: missing")
    sums = directory / SUMS_NAME
    if sums.is_file() and SUMS_NAME in listed:
        for line in sums.read_text("utf-8", errors="replace").splitlines():
            digest, _, name = line.partition("  ")
            entry = listed.get(name)
            if entry is None or entry.get("sha256") != digest:
                problems.append(f"{SUMS_NAME}: line for {name!r} disagrees with the manifest")
    elif SUMS_NAME not in listed:
        problems.append(f"{SUMS_NAME}: not covered by the manifest")
    signature_path = directory / SIGNATURE_NAME
    given = public_key or key_file
    if not signature_path.is_file():
        signature = "absent"
        if given is not None:
            problems.append(f"{SIGNATURE_NAME}: a key was given but the bundle is not signed")
    elif given is None:
        signature = "not checked (no key given)"
    else:
        try:
            stored = json.loads(signature_path.read_text("utf-8"))
            if not isinstance(stored, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            stored, why = {}, f"unreadable ({exc})"
        else:
            if public_key is not None:
                why = signing.check_public(manifest_bytes, stored, public_key)
            else:
                assert key_file is not None
                why = signing.check_hmac(manifest_bytes, stored, key_file)
        if why:
            signature = "INVALID"
            problems.append(f"{SIGNATURE_NAME}: {why}")
        else:
            signature = f"valid ({stored.get('algorithm')}, key id {stored.get('key_id')})"
    return VerifyResult(directory, len(listed), tuple(problems), signature)


__all__ = [
    "ExportBundle",
    "ExportRefused",
    "VerifyResult",
    "export_article72",
    "load_schema",
    "validate_document",
    "verify_export",
]
