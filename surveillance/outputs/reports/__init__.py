"""Reports for quality managers: the quarterly PMS report (HTML + PDF).

See :mod:`surveillance.outputs.reports.pms`; the figures are in ``plots``, the PDF
layout in ``pdf`` and the HTML template in ``templates/pms.html``.
"""

from surveillance.outputs.reports.pms import (
    Period,
    ReportFiles,
    parse_period,
    previous_quarter,
    write_pms_report,
    write_quarterly,
)

__all__ = [
    "Period",
    "ReportFiles",
    "parse_period",
    "previous_quarter",
    "write_pms_report",
    "write_quarterly",
]
