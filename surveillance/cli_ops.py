"""CLI commands for the scheduler, alerts, vigilance assessment."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this area's commands to ``cli`` (see ``surveillance.cli.group``)."""
