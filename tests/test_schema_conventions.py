"""Schema conventions the store promises (STYLE.md, "Store"), checked on the models.

Every column carries a comment; every status-like column has a CHECK constraint
whose allowed values are exactly its StrEnum's; the store is one facade composed
of repositories named for what they hold.
"""

from __future__ import annotations

import re
from enum import StrEnum

import pytest
from sqlalchemy import CheckConstraint

from surveillance.core import statuses
from surveillance.store import Store
from surveillance.store.base import Repository
from surveillance.store.models import Base

#: (table, column) -> the enum its CHECK constraint must list.
STATUS_COLUMNS: dict[tuple[str, str], type[StrEnum]] = {
    ("job_run", "status"): statuses.JobRunStatus,
    ("drift_check", "status"): statuses.DriftStatus,
    ("performance_check", "status"): statuses.PerformanceStatus,
    ("incident", "status"): statuses.IncidentStatus,
    ("incident", "severity"): statuses.Severity,
    ("incident", "signal_kind"): statuses.SignalKind,
    ("incident", "vigilance_class"): statuses.VigilanceClass,
    ("alert_delivery", "status"): statuses.DeliveryStatus,
    ("alert_delivery", "kind"): statuses.DeliveryKind,
    ("reference_set", "kind"): statuses.ReferenceKind,
    ("diagnosis", "source"): statuses.DiagnosisSource,
    ("check_unit", "status"): statuses.CheckUnitStatus,
}


def test_every_column_has_a_comment() -> None:
    missing = [
        f"{table.name}.{column.name}"
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if not (column.comment or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("table", "column"),
    [pytest.param(t, c, id=f"{t}.{c}") for t, c in STATUS_COLUMNS],
)
def test_status_columns_are_checked_against_their_enum(table: str, column: str) -> None:
    checks = [
        str(c.sqltext)
        for c in Base.metadata.tables[table].constraints
        if isinstance(c, CheckConstraint) and re.match(rf"\s*{column}\s+IN\s*\(", str(c.sqltext))
    ]
    assert len(checks) == 1, f"{table}.{column} needs exactly one IN (...) CHECK, found {checks}"
    allowed = set(re.findall(r"'([^']*)'", checks[0]))
    assert allowed == {m.value for m in STATUS_COLUMNS[(table, column)]}


def test_store_is_composed_of_named_repositories(sqlite_url: str) -> None:
    from surveillance.store.engine import make_engine

    engine = make_engine(sqlite_url)
    try:
        store = Store(engine)
        areas = {name for name, value in vars(store).items() if isinstance(value, Repository)}
    finally:
        engine.dispose()
    assert areas == {
        "registry",
        "events",
        "checks",
        "incidents",
        "ledger",
        "outbox",
        "embeddings",
        "reporting",
        "audit",
        "bench",
        "partitions",
        "units",
    }
