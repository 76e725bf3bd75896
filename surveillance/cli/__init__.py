"""The ``surveillance`` command line: the only entry point for people.

``app`` holds the root group, the shared context and ``main``; each area's
commands live in their own module and are attached here, so no area module
imports another and nothing outside this package imports it.
"""

from surveillance.cli import (
    admin,
    alerts,
    checks,
    dicom,
    embed,
    incidents,
    intake,
    kafka,
    reports,
    scheduler,
)
from surveillance.cli.app import cli, main

for _area in (admin, intake, kafka, dicom, embed, checks, incidents, alerts, scheduler, reports):
    _area.register(cli)

__all__ = ["cli", "main"]
