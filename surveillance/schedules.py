"""Schedule strings from the config: ``"every 15m"``, ``"every 1h"``, cron."""

from __future__ import annotations

import re

from surveillance.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(spec: str) -> float:
    """Seconds of an ``every N<unit>`` schedule."""
    match = re.fullmatch(r"every\s+(\d+)\s*([smhd])", spec.strip())
    if match is None:
        raise ConfigError(
            f"schedule {spec!r} is not an interval; write e.g. 'every 15m', 'every 1h' "
            "(cron schedules run under the scheduler)"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"schedule {spec!r} must be a positive interval")
    return float(seconds)


__all__ = ["parse_interval"]
