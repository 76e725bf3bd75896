"""Reports for quality managers: the quarterly PMS report (HTML + PDF).

See :mod:`surveillance.reports.pms`; the figures are in ``plots``, the PDF
layout in ``pdf`` and the HTML template in ``templates/pms.html``.
"""

from surveillance.reports.pms import (
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
