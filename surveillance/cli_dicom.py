"""CLI commands for the DICOM C-STORE receiver and DICOM file/folder ingest."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    """Add this area's commands to ``cli`` (see ``surveillance.cli.group``)."""
