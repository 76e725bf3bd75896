"""CLI commands for the Kafka consumer, dead-letter replay, ingest benchmark."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this area's commands to ``cli`` (see ``surveillance.cli.group``)."""
