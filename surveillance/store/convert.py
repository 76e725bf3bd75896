"""ORM rows -> domain objects, shared by the repositories (rows never leave the store)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from surveillance.store.domain import (
    Baseline,
    DriftCheck,
    Incident,
    IncidentEvent,
    ModelInfo,
    PerformanceCheck,
    VigilanceReport,
)
from surveillance.store.models import (
    BaselineRow,
    DriftCheckRow,
    IncidentEventRow,
    IncidentRow,
    ModelRow,
    PerformanceCheckRow,
    VigilanceReportRow,
)


def model_info(row: ModelRow, baselines: Iterable[BaselineRow]) -> ModelInfo:
    return ModelInfo(
        id=row.id,
        name=row.name,
        version=row.version,
        manufacturer=row.manufacturer,
        intended_use=row.intended_use,
        findings={k: float(v) for k, v in row.findings.items()},
        udi_di=row.udi_di,
        basic_udi_di=row.basic_udi_di,
        device_class=row.device_class,
        notified_body=row.notified_body,
        certificate=row.certificate,
        baselines=tuple(
            Baseline(
                finding=b.finding,
                metric=b.metric,
                stratum=b.stratum,
                value=b.value,
                ci_lower=b.ci_lower,
                ci_upper=b.ci_upper,
                alert_limit=b.alert_limit,
                source_document=b.source_document,
                rebaselined_at=b.rebaselined_at,
            )
            for b in baselines
        ),
    )


def drift_check(row: DriftCheckRow, model: str) -> DriftCheck:
    return DriftCheck(
        id=row.id,
        model=model,
        detector=row.detector,
        signal=row.signal,
        stratum_kind=row.stratum_kind,
        stratum_value=row.stratum_value,
        window_start=row.window_start,
        window_end=row.window_end,
        status=row.status,
        statistic=row.statistic,
        p_value=row.p_value,
        threshold=row.threshold,
        n_reference=row.n_reference,
        n_window=row.n_window,
        details=dict(row.details),
        p_adjusted=row.p_adjusted,
        effect_size=row.effect_size,
        effect_name=row.effect_name,
        min_effect=row.min_effect,
    )


def performance_check(row: PerformanceCheckRow, model: str) -> PerformanceCheck:
    return PerformanceCheck(
        id=row.id,
        model=model,
        finding=row.finding,
        metric=row.metric,
        stratum_kind=row.stratum_kind,
        stratum_value=row.stratum_value,
        window_start=row.window_start,
        window_end=row.window_end,
        estimated=row.estimated,
        status=row.status,
        value=row.value,
        ci_lower=row.ci_lower,
        ci_upper=row.ci_upper,
        n=row.n,
        labelled_fraction=row.labelled_fraction,
        baseline_value=row.baseline_value,
        alert_limit=row.alert_limit,
        details=dict(row.details),
    )


def incident(
    row: IncidentRow,
    model: str,
    events: Sequence[IncidentEventRow] = (),
    reports: Sequence[VigilanceReport] = (),
) -> Incident:
    return Incident(
        id=row.id,
        model=model,
        signal_kind=row.signal_kind,
        signal=row.signal,
        stratum_kind=row.stratum_kind,
        stratum_value=row.stratum_value,
        severity=row.severity,
        status=row.status,
        title=row.title,
        summary=row.summary,
        opened_at=row.opened_at,
        aware_at=row.aware_at,
        last_evidence_at=row.last_evidence_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        closed_at=row.closed_at,
        resolution=row.resolution,
        capa_reference=row.capa_reference,
        vigilance_class=row.vigilance_class,
        mdr_deadline_at=row.mdr_deadline_at,
        fda_deadline_at=row.fda_deadline_at,
        events=tuple(
            IncidentEvent(
                at=e.at,
                kind=e.kind,
                actor=e.actor,
                note=e.note,
                drift_check_id=e.drift_check_id,
                performance_check_id=e.performance_check_id,
            )
            for e in events
        ),
        recurrence_of=row.recurrence_of,
        reports=tuple(reports),
    )


def vigilance_report(row: VigilanceReportRow) -> VigilanceReport:
    return VigilanceReport(
        incident_id=row.incident_id,
        authority=row.authority,
        reference=row.reference,
        reported_at=row.reported_at,
        recorded_by=row.recorded_by,
        recorded_at=row.recorded_at,
    )


__all__ = ["drift_check", "incident", "model_info", "performance_check", "vigilance_report"]
