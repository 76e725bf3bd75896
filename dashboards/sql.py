"""The panels' SQL as Grafana's PostgreSQL data source would send it.

:func:`interpolate` substitutes the template variables (a multi-value
variable becomes a quoted, comma-separated list; ``$__interval`` a duration)
and expands the macros (``$__timeFilter``, ``$__timeGroupAlias``, ...) the
way Grafana's SQL macro engine writes them. ``surveillance bench panels``
runs every query this gives under ``EXPLAIN ANALYZE``; tests run them as the
read-only role.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dashboards.provisioning import dashboards

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One panel's (or annotation's, or template variable's) raw SQL."""

    dashboard: str  # uid
    title: str
    sql: str
    kind: str  # "panel" | "annotation" | "variable"


def panel_queries() -> Iterator[PanelQuery]:
    """Every SQL query of every dashboard: panels, annotations, template variables."""
    for dashboard in dashboards():
        uid = dashboard["uid"]
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                yield PanelQuery(uid, f"variable: {var['name']}", var["query"], "variable")
        for panel in dashboard.get("panels", []):
            for target in panel.get("targets", []):
                if "rawSql" in target:
                    yield PanelQuery(uid, panel["title"], target["rawSql"], "panel")
        for annotation in dashboard.get("annotations", {}).get("list", []):
            target = annotation.get("target")
            if isinstance(target, dict) and "rawSql" in target:
                yield PanelQuery(
                    uid, f"annotation: {annotation['name']}", target["rawSql"], "annotation"
                )


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhdw])'?", duration.strip())
    if match is None:
        raise ValueError(f"unsupported interval {duration!r} (expected e.g. '1h' or '30m')")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement that inserts ``text`` as it is (no backslash escapes)."""
    return lambda _match: text


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate(
    sql: str,
    variables: dict[str, Any],
    start: datetime,
    end: datetime,
    *,
    interval: str = "1h",
) -> str:
    """Template variables first, then macros, as Grafana does.

    ``variables`` maps a name to a string (single value) or a list of strings
    (multi-value, "All"). Raises ValueError if a ``$name`` is left over.
    """
    out = sql.replace("$__interval", interval)
    for name in sorted(variables, key=len, reverse=True):  # $scanner before $s...
        value = variables[name]
        text = ",".join(_quote(v) for v in value) if isinstance(value, list) else str(value)
        out = re.sub(rf"\$\{{{name}\}}|\${name}\b", _literal(text), out)
    frm, to = (f"'{t:%Y-%m-%dT%H:%M:%SZ}'" for t in (start, end))

    def group(match: re.Match[str], alias: bool) -> str:
        column, step = (a.strip() for a in match.group(1).split(",")[:2])
        seconds = _seconds(step)
        expr = f"floor(extract(epoch from {column})/{seconds})*{seconds}"
        return f'{expr} AS "time"' if alias else expr

    out = re.sub(r"\$__timeGroupAlias\(([^()]*)\)", lambda m: group(m, True), out)
    out = re.sub(r"\$__timeGroup\(([^()]*)\)", lambda m: group(m, False), out)
    out = re.sub(
        r"\$__timeFilter\(([^()]*)\)", lambda m: f"{m.group(1)} BETWEEN {frm} AND {to}", out
    )
    out = out.replace("$__timeFrom()", frm).replace("$__timeTo()", to)
    leftover = re.findall(r"\$\w+", out)
    if leftover:
        raise ValueError(f"uninterpolated {leftover} in {out}")
    return out


__all__ = ["PanelQuery", "interpolate", "panel_queries"]
