"""Render a :class:`~surveillance.outputs.reports.document.Document` as PDF with reportlab.

Why reportlab (5.1, BSD licence, a pure-Python wheel whose only dependencies,
pillow and charset-normalizer, the project already has): it lays out real
paginated documents (tables that split across pages with repeated headers,
images, running footers) in-process, with no browser and no system library. The
alternatives were worse here: headless Chromium ``--print-to-pdf`` is a ~300 MB
system package that a container or CI image may lack and that runs a sandboxed
browser per report; matplotlib's ``PdfPages`` cannot flow text or split tables;
WeasyPrint needs Pango/cairo from the OS.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image as PILImage
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    CondPageBreak,
    Flowable,
    Image,
    KeepTogether,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus import Paragraph as RLParagraph

from surveillance.outputs.reports.document import (
    BlankField,
    Document,
    FigureBlock,
    KeyValues,
    Link,
    Paragraph,
    TableBlock,
)

MARGIN = 16 * mm
# reportlab reads the creation date from SOURCE_DATE_EPOCH (else 2000-01-01 in
# invariant mode): set it around one build at a time
_DATE_LOCK = threading.Lock()
STATUS_FILL = {
    "ok": colors.HexColor("#e8f5e9"),
    "warning": colors.HexColor("#fff4d6"),
    "breach": colors.HexColor("#fde2e1"),
    "drift": colors.HexColor("#fde2e1"),
    "missed": colors.HexColor("#fde2e1"),
}


def _styles() -> dict[str, ParagraphStyle]:
    base = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=base["BodyText"], fontSize=9, leading=12)
    return {
        "title": ParagraphStyle("title", parent=base["Title"], fontSize=18, leading=22),
        "subtitle": ParagraphStyle("subtitle", parent=body, fontSize=11, leading=14),
        "h1": ParagraphStyle(
            "h1", parent=base["Heading2"], fontSize=13, leading=16, spaceBefore=8, spaceAfter=4
        ),
        "body": body,
        "note": ParagraphStyle("note", parent=body, textColor=colors.HexColor("#555555")),
        "warning": ParagraphStyle("warning", parent=body, textColor=colors.HexColor("#a01818")),
        "cell": ParagraphStyle("cell", parent=body, fontSize=7, leading=8.6),
        "head": ParagraphStyle(
            "head", parent=body, fontSize=7, leading=8.6, fontName="Helvetica-Bold"
        ),
        "caption": ParagraphStyle(
            "caption", parent=body, fontSize=7.5, leading=9.5, textColor=colors.HexColor("#444444")
        ),
    }


def _p(text: str, style: ParagraphStyle) -> RLParagraph:
    return RLParagraph(escape(text).replace("\n", "<br/>"), style)


def _table(block: TableBlock, width: float, st: dict[str, ParagraphStyle]) -> list[Flowable]:
    columns = len(block.header)
    weights = block.widths if len(block.widths) == columns else (1.0,) * columns
    total = sum(weights)
    col_widths = [width * w / total for w in weights]
    data: list[list[Any]] = [[_p(h, st["head"]) for h in block.header]]
    data += [[_p(cell, st["cell"]) for cell in row] for row in block.rows]
    table = Table(data, colWidths=col_widths, repeatRows=1)
    style: list[tuple[Any, ...]] = [
        ("GRID", (0, 0), (-1, -1), 0.3, colors.HexColor("#bbbbbb")),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eceff4")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
    ]
    for i, status in enumerate(block.row_status):
        fill = STATUS_FILL.get(status)
        if fill is not None and status != "ok":
            style.append(("BACKGROUND", (0, i + 1), (-1, i + 1), fill))
    table.setStyle(TableStyle(style))
    if not block.caption:
        return [table, Spacer(1, 6)]
    caption = _p(block.caption, st["caption"])
    if len(block.rows) <= 30:  # a caption never sits alone at a page foot
        return [KeepTogether([caption, table]), Spacer(1, 6)]
    return [caption, table, Spacer(1, 6)]


def _figure(block: FigureBlock, width: float, st: dict[str, ParagraphStyle]) -> list[Flowable]:
    with PILImage.open(block.path) as image:
        w_px, h_px = image.size
    height = width * h_px / w_px
    max_height = A4[1] - 2 * MARGIN - 30 * mm
    if height > max_height:
        width, height = width * max_height / height, max_height
    return [
        KeepTogether(
            [Image(str(block.path), width=width, height=height), _p(block.caption, st["caption"])]
        ),
        Spacer(1, 6),
    ]


def _blank(block: BlankField, width: float, st: dict[str, ParagraphStyle]) -> list[Flowable]:
    box = Table([[""]], colWidths=[width], rowHeights=[block.lines * 14])
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.6, colors.HexColor("#888888"))]))
    return [KeepTogether([_p(block.label, st["head"]), box]), Spacer(1, 8)]


def _key_values(block: KeyValues, width: float, st: dict[str, ParagraphStyle]) -> list[Flowable]:
    data = [[_p(k, st["head"]), _p(v, st["cell"])] for k, v in block.items]
    table = Table(data, colWidths=[width * 0.28, width * 0.72])
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#dddddd")),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
            ]
        )
    )
    return [table, Spacer(1, 6)]


def _block(block: object, width: float, st: dict[str, ParagraphStyle]) -> list[Flowable]:
    if isinstance(block, Paragraph):
        return [_p(block.text, st.get(block.kind, st["body"])), Spacer(1, 4)]
    if isinstance(block, TableBlock):
        return _table(block, width, st)
    if isinstance(block, FigureBlock):
        return _figure(block, width, st)
    if isinstance(block, KeyValues):
        return _key_values(block, width, st)
    if isinstance(block, Link):
        text = (
            f'{escape(block.text)} <a href="{escape(block.href)}" color="#1f4e9c">'
            f"<u>{escape(block.label)}</u></a>"
        )
        return [RLParagraph(text, st["body"]), Spacer(1, 4)]
    if isinstance(block, BlankField):
        return _blank(block, width, st)
    raise TypeError(f"unknown block {type(block).__name__}")


def _story(document: Document, width: float) -> list[Flowable]:
    st = _styles()
    story: list[Flowable] = [
        _p(document.title, st["title"]),
        _p(document.subtitle, st["subtitle"]),
        Spacer(1, 6),
        *_key_values(KeyValues(document.meta), width, st),
        _p("Contents: " + " · ".join(s.title for s in document.sections), st["note"]),
        Spacer(1, 4),
    ]
    for section in document.sections:
        story.append(CondPageBreak(60 * mm))
        heading = _p(section.title, st["h1"])
        for index, block in enumerate(section.blocks):
            flowables = _block(block, width, st)
            if index == 0:  # a heading never sits alone at a page foot
                story.append(KeepTogether([heading, *flowables]))
            else:
                story += flowables
        if not section.blocks:
            story.append(heading)
    return story


def write_pdf(
    document: Document,
    path: Path,
    *,
    footer: str | None = None,
    created: datetime | None = None,
) -> Path:
    """Lay ``document`` out on A4 pages with a running footer and page numbers.

    ``created`` is the PDF's creation date (the report's generation time); the
    bytes depend only on the content and that time.
    """
    footer_text = footer or document.title

    def on_page(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont("Helvetica", 7)
        canvas.setFillColor(colors.HexColor("#666666"))
        canvas.drawString(MARGIN, 9 * mm, footer_text)
        canvas.drawRightString(A4[0] - MARGIN, 9 * mm, f"page {doc.page}")
        canvas.restoreState()

    pdf = SimpleDocTemplate(
        str(path),
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN + 4 * mm,
        title=document.title,
        subject=document.subtitle,
        creator="surveillance",
        author="surveillance",
        invariant=True,  # no random document id: the bytes depend only on the content
    )
    story = _story(document, A4[0] - 2 * MARGIN)
    with _DATE_LOCK:
        before = os.environ.get("SOURCE_DATE_EPOCH")
        if created is not None:
            os.environ["SOURCE_DATE_EPOCH"] = str(int(created.timestamp()))
        try:
            pdf.build(story, onFirstPage=on_page, onLaterPages=on_page)
        finally:
            if before is None:
                os.environ.pop("SOURCE_DATE_EPOCH", None)
            else:
                os.environ["SOURCE_DATE_EPOCH"] = before
    return path


__all__: Sequence[str] = ["write_pdf"]
