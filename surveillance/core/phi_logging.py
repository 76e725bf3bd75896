"""Keep identifiers out of log files: a redacting ``logging.Filter`` for third-party loggers.

Our own log lines never carry a UID or a patient value, but pydicom and
pynetdicom do: a pydicom warning quotes the value it found invalid
(``Invalid value for VR UI: '1.2.840....'``), pynetdicom's debug output prints
data set elements, and Python warnings are printed with their message. Routed
through :class:`PhiRedactingFilter`, every such token becomes a short stable tag:

* UID-like tokens (four or more dot-separated numbers, ``\\b\\d+(\\.\\d+){3,}\\b``)
  -> ``<uid:1a2b3c4d>``, the first 8 hex digits of the token's SHA-256;
* quoted values after a DICOM value marker (``Invalid value for VR PN: 'Doe^J'``,
  ``(0010,0010) PN: 'Doe^J'``, ``PN [Doe^J]``, ``value 'x'``, ``Value: "x"``)
  -> ``<value:1a2b3c4d>``.

The tags are unkeyed (no secret is needed to log), stable (one value gives one
tag, so log lines can still be correlated) and short. They are not a
pseudonym: a UID that an attacker already knows can be recognised by hashing
it. IP addresses (four numbers) are redacted too, which is the safe side.

Usage, once at start-up after logging is configured::

    install_phi_filter()   # pydicom, pynetdicom, py.warnings (+ warnings -> logging)

This module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable

DEFAULT_LOGGER_NAMES: tuple[str, ...] = ("pydicom", "pynetdicom", "py.warnings")

_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")
# Two-letter DICOM value representations.
_VRS = (
    "AE|AS|AT|CS|DA|DS|DT|FD|FL|IS|LO|LT|OB|OD|OF|OL|OV|OW|PN|SH|SL|SQ|SS|ST|SV|TM|UC|UI|UL"
    "|UN|UR|US|UT|UV"
)
# 'quoted' or "quoted" (no line breaks; backslash escapes as repr writes them)
_QUOTED = r"""(?P<q>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
_VALUE_PATTERNS: tuple[re.Pattern[str], ...] = (
    # pydicom: "Invalid value for VR UI: '1.2.3'", "... VR DA: '2020x'"
    re.compile(rf"(?P<lead>\bVR (?:{_VRS})\b[^'\"\n]{{0,20}}?:\s*){_QUOTED}"),
    # str(Dataset) / pynetdicom: "(0010,0010) Patient's Name   PN: 'Doe^John'"
    re.compile(rf"(?P<lead>\b(?:{_VRS}):\s*){_QUOTED}"),
    # pynetdicom pretty-printed elements: "PN [Doe^John]"
    re.compile(rf"(?P<lead>\b(?:{_VRS}) )(?P<q>\[[^\]\n]*\])"),
    # "value 'x'", "Value: 'x'", "value of 'x'", "values ['a', 'b']"
    re.compile(rf"(?P<lead>\bvalues?\b(?:\s+of)?\s*[:=]?\s*){_QUOTED}", re.IGNORECASE),
)


def _tag(kind: str, token: str) -> str:
    return f"<{kind}:{hashlib.sha256(token.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}>"


def _value_tag(quoted: str) -> str:
    inner = quoted[1:-1]
    if _UID.fullmatch(inner.strip()):  # the same tag as the bare UID elsewhere
        return _tag("uid", inner.strip())
    return _tag("value", inner)


def redact(text: str) -> str:
    """``text`` with quoted DICOM values and UID-like tokens replaced by stable tags."""
    for pattern in _VALUE_PATTERNS:
        text = pattern.sub(lambda m: m.group("lead") + _value_tag(m.group("q")), text)
    return _UID.sub(lambda m: _tag("uid", m.group()), text)


class PhiRedactingFilter(logging.Filter):
    """Rewrites a record's message (args already applied) with :func:`redact`.

    ``prefixes``: only records from loggers with one of these names (or their
    children) are rewritten; empty (the default) rewrites every record the
    filter sees. The exception text and stack info are redacted too. The
    record is never dropped.
    """

    def __init__(self, prefixes: Iterable[str] = ()) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def _applies(self, name: str) -> bool:
        if not self.prefixes:
            return True
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_phi_redacted", False) or not self._applies(record.name):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what we can show safely
            message = f"{record.msg!s} (unformattable arguments)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        setattr(record, "_phi_redacted", True)  # noqa: B010
        return True


def _has_filter(filterer: logging.Filterer) -> bool:
    return any(isinstance(f, PhiRedactingFilter) for f in filterer.filters)


def install_phi_filter(
    logger_names: Iterable[str] = DEFAULT_LOGGER_NAMES,
    *,
    capture_warnings: bool = True,
) -> PhiRedactingFilter:
    """Redact the log records of ``logger_names`` wherever they are written.

    * attaches a :class:`PhiRedactingFilter` to each named logger, to the
      child loggers that already exist (``pynetdicom.assoc``, ...) and to their
      handlers: records logged directly on them are rewritten before any
      handler sees them;
    * attaches a filter scoped to those names to the root logger's handlers,
      so records of child loggers created later, which propagate to the root
      handlers, are rewritten too;
    * with ``capture_warnings`` routes :mod:`warnings` through logging
      (``logging.captureWarnings(True)``: logger ``py.warnings``), so a
      pydicom ``UserWarning`` quoting a UID is redacted instead of printed.

    Idempotent; call it again after adding handlers. Returns the filter used
    for the loggers.
    """
    names = tuple(logger_names)
    direct = PhiRedactingFilter()
    scoped = PhiRedactingFilter(names)
    if capture_warnings:
        logging.captureWarnings(True)
    loggers: list[logging.Logger] = [logging.getLogger(name) for name in names]
    existing = list(logging.Logger.manager.loggerDict.items())
    for child_name, child in existing:
        if isinstance(child, logging.Logger) and any(
            child_name.startswith(name + ".") for name in names
        ):
            loggers.append(child)
    for logger in loggers:
        if not _has_filter(logger):
            logger.addFilter(direct)
        for handler in logger.handlers:
            if not _has_filter(handler):
                handler.addFilter(direct)
    for handler in logging.getLogger().handlers:
        if not _has_filter(handler):
            handler.addFilter(scoped)
    return direct


def uninstall_phi_filter(logger_names: Iterable[str] = DEFAULT_LOGGER_NAMES) -> None:
    """Remove what :func:`install_phi_filter` attached (for tests); warnings stay captured
    until ``logging.captureWarnings(False)``."""
    names = tuple(logger_names)
    targets: list[logging.Filterer] = list(logging.getLogger().handlers)
    for child_name, child in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(child, logging.Logger) and any(
            child_name == name or child_name.startswith(name + ".") for name in names
        ):
            targets.append(child)
            targets.extend(child.handlers)
    for target in targets:
        for existing in list(target.filters):
            if isinstance(existing, PhiRedactingFilter):
                target.removeFilter(existing)


__all__ = [
    "DEFAULT_LOGGER_NAMES",
    "PhiRedactingFilter",
    "install_phi_filter",
    "redact",
    "uninstall_phi_filter",
]
