"""CLI commands for the PMS reports, Article 72 exports, Grafana dashboards."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this area's commands to ``cli`` (see ``surveillance.cli.group``)."""
