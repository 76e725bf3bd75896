"""Monthly partitions of the high-volume tables on PostgreSQL (revision 0010).

``prediction`` is partitioned by RANGE on ``predicted_at`` and ``embedding`` on
``created_at``, one partition per calendar month in UTC
(``prediction_yYYYYmMM``), plus ``<table>_default`` for rows outside every
month (a producer with a wrong clock). Their unique keys live in the
unpartitioned ``prediction_key`` / ``embedding_key``. This repository keeps
that layout:

* :meth:`PartitionsRepository.ensure` creates the monthly partitions up to a
  date (the retention job keeps :data:`MONTHS_AHEAD` months ahead) and adopts
  any month that has rows in the DEFAULT partition: a new partition is made
  for it and those rows, and only those, move into it in the same
  transaction. Nothing else is moved out of DEFAULT.
* :meth:`PartitionsRepository.drop_before` is retention: it detaches and drops
  every monthly partition that lies wholly before a date (never a row-by-row
  delete; the month's rows of the key table go with it)
  and audits what it dropped.

Both run the ``SECURITY DEFINER`` functions that 0010 installs
(``surveillance_ensure_partitions``, ``surveillance_drop_partitions``), so the
daemon's role needs EXECUTE on them, not ownership of the tables. On SQLite
(plain tables) every method is a no-op returning nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import text

from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.domain import Partition

#: Tables partitioned by month on PostgreSQL -> their partition column.
PARTITIONED: dict[str, str] = {"prediction": "predicted_at", "embedding": "created_at"}

#: Months kept ready after the current one.
MONTHS_AHEAD = 3

_NAME = re.compile(r"^(?P<table>[a-z_]+)_y(?P<year>\d{4})m(?P<month>\d{2})$")


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the month holding ``moment``."""
    moment = moment.astimezone(UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_months(moment: datetime, months: int) -> datetime:
    """``moment``'s month start moved by ``months`` (negative: back)."""
    start = month_start(moment)
    index = start.year * 12 + start.month - 1 + months
    return start.replace(year=index // 12, month=index % 12 + 1)


def _known(table: str) -> str:
    if table not in PARTITIONED:
        raise ValueError(
            f"table {table!r} is not partitioned; partitioned tables: {sorted(PARTITIONED)}"
        )
    return table


class PartitionsRepository(Repository):
    """Create monthly partitions ahead, list them, drop the expired ones (PostgreSQL)."""

    def _postgres(self) -> bool:
        return bool(self._sessions.engine.dialect.name == "postgresql")

    def ensure(
        self, until: datetime, *, since: datetime | None = None, table: str = "prediction"
    ) -> int:
        """Create the missing monthly partitions of ``table`` from ``since`` (default:
        the month of ``until``) through the month of ``until``, and adopt the months
        found in its DEFAULT partition. Returns how many partitions were created."""
        _known(table)
        if not self._postgres():
            return 0
        start = since if since is not None else until
        if start > until:
            raise ValueError(
                f"'since' ({start.isoformat()}) is after 'until' ({until.isoformat()})"
            )
        with self._sessions.scope() as s:
            created = s.execute(
                text("SELECT surveillance_ensure_partitions(:t, :since, :until)"),
                {"t": table, "since": start, "until": until},
            ).scalar_one()
        return int(created)

    def partitions(self, table: str = "prediction") -> list[Partition]:
        """The monthly partitions of ``table``, oldest first (DEFAULT not included)."""
        _known(table)
        if not self._postgres():
            return []
        with self._sessions.scope() as s:
            rows = s.execute(
                text(
                    "SELECT c.relname, c.reltuples FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = CAST(:t AS regclass) ORDER BY c.relname"
                ),
                {"t": table},
            ).all()
        out = []
        for name, reltuples in rows:
            match = _NAME.match(name)
            if match is None or match["table"] != table:
                continue  # the DEFAULT partition, or one an operator attached by hand
            start = datetime(int(match["year"]), int(match["month"]), 1, tzinfo=UTC)
            out.append(Partition(table, name, start, add_months(start, 1), int(reltuples)))
        return out

    def default_rows(self, table: str = "prediction") -> int:
        """Rows in ``table``'s DEFAULT partition (outside every monthly partition)."""
        _known(table)
        if not self._postgres():
            return 0
        with self._sessions.scope() as s:
            return int(s.execute(text(f"SELECT count(*) FROM {table}_default")).scalar_one())

    def drop_before(
        self, before: datetime, *, actor: str, table: str = "prediction"
    ) -> list[Partition]:
        """Detach and drop the monthly partitions of ``table`` that end on or before
        ``before``; audited (``retention.partitions``). Returns what was dropped."""
        _known(table)
        if not self._postgres():
            return []
        doomed = [p for p in self.partitions(table) if p.end <= before]
        if not doomed:
            return []
        with self._sessions.scope() as s:
            names = list(
                s.execute(
                    text("SELECT surveillance_drop_partitions(:t, :before)"),
                    {"t": table, "before": before},
                ).scalar_one()
            )
            dropped = [p for p in doomed if p.name in names]
            if names:
                audit.append(
                    s,
                    actor=actor,
                    action="retention.partitions",
                    entity=table,
                    entity_id="*",
                    detail={
                        "dropped": names,
                        "before": before.isoformat(),
                        "rows_estimate": sum(max(p.rows, 0) for p in dropped),
                    },
                )
        return dropped


__all__ = ["MONTHS_AHEAD", "PARTITIONED", "PartitionsRepository", "add_months", "month_start"]
