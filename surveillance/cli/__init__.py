"""The ``surveillance`` command line: the only entry point for people.

``app`` holds the root group, the shared context and ``main``; each area's
commands live in their own module and are attached here, so no area module
imports another and nothing outside this package imports it.
"""

from surveillance.cli import (
    admin,
    alerts,
    bench,
    checks,
    dicom,
    embed,
    incidents,
    intake,
    kafka,
    qms,
    reports,
    results,
    scheduler,
)
from surveillance.cli.app import cli, main

for _area in (
    admin,
    intake,
    kafka,
    dicom,
    embed,
    checks,
    incidents,
    alerts,
    results,
    scheduler,
    reports,
    qms,
    bench,
):
    _area.register(cli)

__all__ = ["cli", "main"]
