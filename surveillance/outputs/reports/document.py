"""A report as a list of sections made of simple blocks.

The PMS report is built once as this structure; the HTML template
(``templates/pms.html``) and the PDF writer (:mod:`surveillance.outputs.reports.pdf`)
both render it, so the two files can never say different things.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Paragraph:
    text: str
    kind: str = "text"  # text | note | warning


@dataclass(frozen=True, slots=True)
class KeyValues:
    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TableBlock:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""
    # per-row status used for colouring: "" | ok | warning | breach | drift | missed
    row_status: tuple[str, ...] = ()
    widths: tuple[float, ...] = ()  # relative column widths (PDF); empty: equal


@dataclass(frozen=True, slots=True)
class FigureBlock:
    path: Path
    caption: str


@dataclass(frozen=True, slots=True)
class Link:
    """A sentence that points at an attached file (a relative link in both renderings)."""

    text: str
    href: str
    label: str


@dataclass(frozen=True, slots=True)
class BlankField:
    """A box a person fills in (the quality manager's conclusions and signature)."""

    label: str
    lines: int = 4


Block = Paragraph | KeyValues | TableBlock | FigureBlock | BlankField | Link


@dataclass(slots=True)
class Section:
    anchor: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass(slots=True)
class Document:
    title: str
    subtitle: str
    meta: tuple[tuple[str, str], ...]
    sections: list[Section] = field(default_factory=list)


__all__ = [
    "BlankField",
    "Block",
    "Document",
    "FigureBlock",
    "KeyValues",
    "Link",
    "Paragraph",
    "Section",
    "TableBlock",
]
