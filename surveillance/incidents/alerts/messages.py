"""The alert text: what someone woken at 3 a.m. needs to act on it.

Every message says **what** drifted or breached, **where** (model and version,
finding, site, scanner), **by how much against which baseline** (the clearance
figure and its source document, or the drift test's p-value against alpha),
**since when** (the first window in evidence), **what to do next**, the
vigilance clock, and **links**: the dashboard and the CLI command that shows
the incident. The same :class:`AlertMessage` feeds every channel.

No PHI: incidents and checks hold pseudonymised strata only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from surveillance.core.metrics import phrase as metric_phrase
from surveillance.core.metrics import sample_phrase
from surveillance.incidents.vigilance import time_left
from surveillance.store import DriftCheck, Incident, PerformanceCheck

#: Display names of the stored effect sizes (DriftCheck.effect_name).
EFFECT_NAMES = {"ks_d": "KS D", "cramers_v": "Cramér's V", "mmd_norm": "normalised MMD"}


def drift_detail(check: DriftCheck) -> str:
    """`` (feature)`` or `` (new values)`` after a signal name; generic names are left out."""
    detail = check.details.get("new_categories") or check.details.get("feature")
    if not detail or re.fullmatch(r"feature_\d+", str(detail)):
        return ""
    return f" ({detail})"


def drift_strength(check: DriftCheck) -> str:
    """How strong a drift check is, in words a reader can weigh: p, adjusted p, effect size."""
    if check.p_value is None:
        return "p=n/a"
    text = f"p={check.p_value:.2g}"
    if check.p_adjusted is not None:
        text += f" (adjusted {check.p_adjusted:.2g})"
    text += f" vs alpha {check.threshold}"
    if check.effect_size is not None and check.effect_name:
        name = EFFECT_NAMES.get(check.effect_name, check.effect_name)
        text += f", {name} {check.effect_size:.2f}"
        if check.min_effect is not None:
            text += f" (tolerance {check.min_effect:.2f})"
    return text


@dataclass(frozen=True, slots=True)
class AlertMessage:
    kind: str  # "open" | "resolve"
    incident_id: int
    model: str
    severity: str
    status: str
    title: str
    what: str
    where: dict[str, str]
    how_much: str
    baseline: str
    since: datetime
    opened_at: datetime
    next_steps: tuple[str, ...]
    vigilance: str
    dashboard_url: str | None
    incident_command: str
    resolution: str | None = None
    closed_at: datetime | None = None
    #: Alertmanager ``alertname`` (``SurveillanceTest`` for ``surveillance alerts test``)
    alertname: str = "SurveillanceIncident"
    signal_kind: str = ""
    signal: str = ""
    stratum_kind: str = ""
    runbook_url: str | None = None
    #: The audit chain's head hash and event count when the message was built: a
    #: copy kept outside the database, to compare with ``audit verify --expect-head``.
    audit_head: str | None = None
    audit_events: int | None = None

    @property
    def subject(self) -> str:
        prefix = "RESOLVED" if self.kind == "resolve" else self.severity.upper()
        return f"[{prefix}] {self.model}: {self.title} (incident #{self.incident_id})"

    def where_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.where.items())

    def text(self) -> str:
        """Plain text (e-mail body, Slack fallback, webhook ``text``)."""
        lines = [self.subject, ""]
        if self.kind == "resolve":
            lines += [
                f"Closed {self.closed_at or self.opened_at:%Y-%m-%d %H:%M} UTC. "
                f"Resolution: {self.resolution or '-'}",
                "",
            ]
        lines += [
            f"What:      {self.what}",
            f"Where:     {self.where_text()}",
            f"How much:  {self.how_much}",
            f"Baseline:  {self.baseline}",
            f"Since:     {self.since:%Y-%m-%d} "
            f"(incident opened {self.opened_at:%Y-%m-%d %H:%M} UTC)",
            f"Vigilance: {self.vigilance}",
        ]
        if self.kind == "open":
            lines += ["", "Next steps:"] + [f"  {n}. {s}" for n, s in enumerate(self.next_steps, 1)]
        lines += ["", f"Incident:  {self.incident_command}"]
        if self.dashboard_url:
            lines.append(f"Dashboard: {self.dashboard_url}")
        if self.audit_head:
            lines.append(f"Audit:     {self.audit_events} events, head {self.audit_head}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"] = self.since.isoformat()
        data["opened_at"] = self.opened_at.isoformat()
        data["closed_at"] = self.closed_at.isoformat() if self.closed_at else None
        data["next_steps"] = list(self.next_steps)
        data["subject"] = self.subject
        return data


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _where(incident: Incident, finding: str | None, version: str | None) -> dict[str, str]:
    where = {"model": f"{incident.model} {version}" if version else incident.model}
    if finding:
        where["finding"] = finding
    if incident.stratum_kind == "scanner":
        scanner, _, site = incident.stratum_value.rpartition(" @ ")
        where["site"] = site or "?"
        where["scanner"] = scanner or incident.stratum_value
    elif incident.stratum_kind == "overall":
        where["site"] = "all sites"
    else:
        where[incident.stratum_kind] = incident.stratum_value
    return where


#: Grafana dashboard UIDs (dashboards/*.json) an incident links to, by signal kind
DASHBOARD_UIDS = {"drift": "surveillance-drift", "performance": "surveillance-performance"}
INCIDENTS_DASHBOARD_UID = "surveillance-incidents"
#: shown before the first and after the last window of the evidence
LINK_MARGIN = timedelta(days=7)


def grafana_base(url: str) -> str:
    """The Grafana root of ``[service] dashboard_url`` (a ``/d/...`` suffix is dropped)."""
    base = url.split("?", 1)[0]
    if "/d/" in base:
        base = base[: base.index("/d/")]
    return base.rstrip("/")


def dashboard_link(
    base: str | None,
    incident: Incident,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> str | None:
    """Grafana link to the incident's dashboard with its real template variables.

    Drift incidents open ``surveillance-drift``, performance incidents
    ``surveillance-performance`` (with ``var-metric``); ``var-model``,
    ``var-site`` and ``var-scanner`` select the root stratum (``$__all`` for
    all sites), and ``from``/``to`` span the evidence (epoch milliseconds).
    """
    if not base:
        return None
    uid = DASHBOARD_UIDS.get(incident.signal_kind)
    if uid is None:
        return f"{grafana_base(base)}/d/{INCIDENTS_DASHBOARD_UID}"
    params: list[tuple[str, str]] = [("var-model", incident.model)]
    if incident.signal_kind == "performance":
        params.append(("var-metric", incident.signal.partition(":")[2] or incident.signal))
    if incident.stratum_kind == "scanner":
        site = incident.stratum_value.rpartition(" @ ")[2]
        params += [("var-site", site or "$__all"), ("var-scanner", incident.stratum_value)]
    elif incident.stratum_kind == "site":
        params += [("var-site", incident.stratum_value), ("var-scanner", "$__all")]
    else:
        params += [("var-site", "$__all"), ("var-scanner", "$__all")]
    start = (since or incident.opened_at) - LINK_MARGIN
    end = (until or incident.last_evidence_at) + LINK_MARGIN
    params += [
        ("from", str(int(start.timestamp() * 1000))),
        ("to", str(int(end.timestamp() * 1000))),
    ]
    return f"{grafana_base(base)}/d/{uid}?{urlencode(params)}"


def _vigilance(incident: Incident, now: datetime) -> str:
    cls = incident.vigilance_class.replace("_", " ")
    if incident.mdr_deadline_at is None and incident.fda_deadline_at is None:
        return f"{cls}; no reporting deadline"
    parts = [cls]
    if incident.mdr_deadline_at:
        parts.append(
            f"EU MDR report due {incident.mdr_deadline_at:%Y-%m-%d %H:%M} UTC "
            f"({time_left(incident.mdr_deadline_at, now)})"
        )
    if incident.fda_deadline_at:
        parts.append(
            f"FDA MDR due {incident.fda_deadline_at:%Y-%m-%d %H:%M} UTC "
            f"({time_left(incident.fda_deadline_at, now)})"
        )
    return "; ".join(parts)


def _performance_parts(
    incident: Incident, checks: Sequence[PerformanceCheck]
) -> tuple[str, str, str, datetime, str]:
    finding, _, metric = incident.signal.partition(":")
    name = metric_phrase(metric)
    breaches = [c for c in checks if c.status == "breach"] or list(checks)
    latest = max(breaches, key=lambda c: c.window_end)
    first = min(c.window_start for c in breaches)
    labelled = (
        f", {latest.labelled_fraction:.0%} of studies labelled"
        if latest.labelled_fraction is not None
        else ""
    )
    gap = (
        f", {abs(latest.value - latest.alert_limit):.3f} below the alert limit"
        if latest.value is not None and latest.alert_limit is not None
        else ""
    )
    how_much = (
        f"{name} {_f(latest.value)} (95% CI {_f(latest.ci_lower)}-{_f(latest.ci_upper)}, "
        f"{sample_phrase(latest.metric, latest.n, latest.details)}) "
        f"in {latest.window_start:%Y-%m-%d}..{latest.window_end:%Y-%m-%d}"
        f"{gap}{labelled}; {len(breaches)} window(s) in breach"
    )
    baseline = (
        f"alert limit {_f(latest.alert_limit)}; cleared {name} {_f(latest.baseline_value)}"
        " (clearance baseline)"
    )
    what = f"{name[:1].upper()}{name[1:]} for {finding} breached its clearance alert limit"
    return what, how_much, baseline, first, finding


def _drift_parts(
    incident: Incident, checks: Sequence[DriftCheck]
) -> tuple[str, str, str, datetime]:
    drifted = [c for c in checks if c.status == "drift"] or list(checks)
    first = min(c.window_start for c in drifted)
    strongest = min(drifted, key=lambda c: c.p_value if c.p_value is not None else 1.0)
    signals = sorted({c.signal for c in drifted})
    how_much = (
        f"strongest: {strongest.signal}{drift_detail(strongest)} {drift_strength(strongest)} "
        f"({strongest.detector}, {strongest.n_window} cases vs "
        f"{strongest.n_reference} in the reference), window "
        f"{strongest.window_start:%Y-%m-%d}..{strongest.window_end:%Y-%m-%d}; "
        f"{len(drifted)} drifted window-signal(s)"
    )
    baseline = "the frozen reference set (first weeks of deployment)"
    what = f"Input distribution shifted: {', '.join(signals[:4])}" + (
        "..." if len(signals) > 4 else ""
    )
    return what, how_much, baseline, first


PERFORMANCE_STEPS = (
    "Acknowledge: surveillance incidents ack {id} --by YOUR_NAME",
    "Check what changed at this stratum (scanner software, protocol, population) and "
    "review the missed cases on the dashboard.",
    "Assess vigilance reportability before the deadline: "
    "surveillance incidents assess {id} --class ... --by YOUR_NAME",
    "Consider restricting use at this stratum until resolved; record the CAPA on close.",
)
DRIFT_STEPS = (
    "Acknowledge: surveillance incidents ack {id} --by YOUR_NAME",
    "Confirm what changed (scanner software or protocol update, new site population).",
    "Watch labelled performance at this stratum; drift alone is not a performance loss.",
    "Close with the finding, or assess vigilance if performance is affected.",
)


def build_message(
    incident: Incident,
    *,
    kind: str,
    performance: Sequence[PerformanceCheck],
    drift: Sequence[DriftCheck],
    dashboard_url: str | None,
    now: datetime,
    baseline_source: str | None = None,
    model_version: str | None = None,
    runbook_url: str | None = None,
) -> AlertMessage:
    """The message for ``incident`` (``kind`` ``open`` or ``resolve``) from its evidence."""
    finding: str | None = None
    root = (incident.stratum_kind, incident.stratum_value)
    lead = [c for c in performance if f"{c.finding}:{c.metric}" == incident.signal]
    lead = [c for c in lead if (c.stratum_kind, c.stratum_value) == root] or lead
    own_drift = [c for c in drift if (c.stratum_kind, c.stratum_value) == root] or list(drift)
    if incident.signal_kind == "performance" and performance:
        what, how_much, baseline, since, finding = _performance_parts(incident, lead or performance)
        if baseline_source:
            baseline += f" per {baseline_source}"
        steps = PERFORMANCE_STEPS
        if own_drift:
            drift_what, *_ = _drift_parts(incident, own_drift)
            what = f"{what}; also: {drift_what[0].lower()}{drift_what[1:]}"
            since = min(since, min(c.window_start for c in own_drift))
    elif incident.signal_kind == "drift" and drift:
        what, how_much, baseline, since = _drift_parts(incident, own_drift)
        steps = DRIFT_STEPS
    else:
        what, how_much, baseline, since = incident.title, incident.summary, "-", incident.opened_at
        steps = PERFORMANCE_STEPS if incident.signal_kind == "performance" else DRIFT_STEPS
    return AlertMessage(
        kind=kind,
        incident_id=incident.id,
        model=incident.model,
        severity=incident.severity,
        status=incident.status,
        title=incident.title,
        what=what,
        where=_where(incident, finding, model_version),
        how_much=how_much,
        baseline=baseline,
        since=since,
        opened_at=incident.opened_at,
        next_steps=tuple(step.format(id=incident.id) for step in steps),
        vigilance=_vigilance(incident, now),
        dashboard_url=dashboard_link(dashboard_url, incident, since=since),
        incident_command=f"surveillance incidents show {incident.id}",
        resolution=incident.resolution,
        closed_at=incident.closed_at,
        signal_kind=incident.signal_kind,
        signal=incident.signal,
        stratum_kind=incident.stratum_kind,
        runbook_url=runbook_url,
    )


__all__ = ["DASHBOARD_UIDS", "AlertMessage", "build_message", "dashboard_link", "grafana_base"]
