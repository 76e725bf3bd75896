"""Schedule strings from the config, turned into APScheduler 3 triggers.

Two forms:

``every N<unit>``            an interval; unit ``s``, ``m``, ``h`` or ``d``
                             (``"every 15m"``, ``"every 6h"``)
``cron M H DOM MON DOW``     five standard crontab fields, evaluated in UTC
                             (``"cron 0 6 * * 1"``: Mondays 06:00 UTC)

Interval triggers are anchored at :data:`INTERVAL_ANCHOR` (2000-01-01 00:00 UTC),
not at the moment the scheduler starts, so every replica and every restart
computes the same grid of scheduled times ("every 15m" fires at :00, :15, :30
and :45). That grid is what the job-run ledger keys on.

Day of week follows crontab (0 or 7 = Sunday, 1 = Monday, ... 6 = Saturday;
names ``sun``..``sat`` work too). APScheduler 3.x numbers weekdays from Monday =
0 (its issue 286); the numbers are translated to names here so that
``cron 0 6 * * 1`` means Monday, as any crontab user expects.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from surveillance.core.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
INTERVAL_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_EXAMPLES = "write e.g. 'every 15m', 'every 1h' or 'cron 0 6 * * 1'"


def parse_interval(spec: str) -> float:
    """Seconds of an ``every N<unit>`` schedule."""
    match = re.fullmatch(r"every\s+(\d+)\s*([smhd])", spec.strip())
    if match is None:
        raise ConfigError(f"schedule {spec!r} is not an interval; {_EXAMPLES}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"schedule {spec!r} must be a positive interval")
    return float(seconds)


def _weekday(token: str, spec: str) -> int:
    """0 (Sunday) .. 7 (Sunday again) for a crontab number or a name."""
    if token in _WEEKDAYS:
        return _WEEKDAYS.index(token)
    if not token.isdigit() or int(token) > 7:
        raise ConfigError(
            f"schedule {spec!r}: day of week {token!r} must be 0-7 (0 and 7 = Sunday) "
            "or a name sun..sat"
        )
    return int(token)


def _day_of_week(field: str, spec: str) -> str:
    """Crontab day-of-week field -> APScheduler field written with names only."""
    if field == "*":
        return "*"
    names: list[str] = []
    for item in field.lower().split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ConfigError(f"schedule {spec!r}: bad step in day of week {item!r}")
            step = int(step_text)
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            lo, hi = base.split("-", 1)
            first, last = _weekday(lo, spec), _weekday(hi, spec)
            if last == 0 and first > 0:
                last = 7  # "fri-sun"
            if last < first:
                raise ConfigError(f"schedule {spec!r}: day-of-week range {base!r} runs backwards")
        else:
            first = last = _weekday(base, spec)
        names.extend(_WEEKDAYS[d % 7] for d in range(first, last + 1, step))
    return ",".join(dict.fromkeys(names))


def parse_schedule(spec: str) -> BaseTrigger:
    """The APScheduler trigger (UTC) of a schedule string; :class:`ConfigError` if invalid."""
    text = spec.strip()
    if text.startswith("every"):
        return IntervalTrigger(
            seconds=int(parse_interval(text)), start_date=INTERVAL_ANCHOR, timezone=UTC
        )
    if text.startswith("cron"):
        fields = text[4:].split()
        if len(fields) != 5:
            raise ConfigError(
                f"schedule {spec!r}: cron needs 5 fields (minute hour day-of-month month "
                f"day-of-week), got {len(fields)}"
            )
        minute, hour, day, month, dow = fields
        try:
            return CronTrigger(
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=_day_of_week(dow, spec),
                timezone=UTC,
            )
        except ValueError as exc:
            raise ConfigError(f"schedule {spec!r} is not a valid cron expression: {exc}") from exc
    raise ConfigError(f"schedule {spec!r} is neither an interval nor cron; {_EXAMPLES}")


def fire_times(trigger: BaseTrigger, after: datetime, until: datetime) -> Iterator[datetime]:
    """The trigger's fire times ``t`` with ``after < t <= until``, oldest first."""
    moment = after + timedelta(microseconds=1)
    previous: datetime | None = None
    while True:
        nxt = trigger.get_next_fire_time(previous, moment)
        if nxt is None or nxt > until:
            return
        nxt = nxt.astimezone(UTC)
        if nxt > after:
            yield nxt
        previous = nxt
        moment = nxt + timedelta(microseconds=1)


def recent_fire_times(
    trigger: BaseTrigger, after: datetime, until: datetime, keep: int
) -> tuple[list[datetime], int]:
    """The newest ``keep`` fire times in ``(after, until]`` and how many there were in all."""
    newest: deque[datetime] = deque(maxlen=max(keep, 1))
    total = 0
    for moment in fire_times(trigger, after, until):
        newest.append(moment)
        total += 1
    return list(newest)[-keep:] if keep > 0 else [], total


def latest_fire_time(trigger: BaseTrigger, until: datetime, lookback: timedelta) -> datetime | None:
    """The newest fire time in ``(until - lookback, until]``, if any."""
    found, _ = recent_fire_times(trigger, until - lookback, until, keep=1)
    return found[-1] if found else None


__all__ = [
    "INTERVAL_ANCHOR",
    "fire_times",
    "latest_fire_time",
    "parse_interval",
    "parse_schedule",
    "recent_fire_times",
]
