"""A tiny document model (headings, paragraphs, bullets, tables, images) and its two renderings.

This module owns the report's markup: the renderer builds one list of blocks and this module
turns it into markdown and into a self-contained HTML page, so the two never drift apart.
Inline markup is only `code` spans written with backticks (use `code()` for data).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeAlias

__all__ = [
    "Block",
    "Bullets",
    "Heading",
    "Image",
    "Paragraph",
    "Table",
    "code",
    "to_html",
    "to_markdown",
    "write_document",
]


@dataclass(frozen=True, slots=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True, slots=True)
class Paragraph:
    text: str


@dataclass(frozen=True, slots=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Table:
    """A table; `align` has one "l" or "r" per column (numbers read best right-aligned)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    align: tuple[Literal["l", "r"], ...]


@dataclass(frozen=True, slots=True)
class Image:
    """A picture referenced by a path relative to the report, so the directory can move."""

    src: str
    alt: str


Block: TypeAlias = Heading | Paragraph | Bullets | Table | Image


def code(text: str) -> str:
    """`text` as an inline code span; backticks inside it would end the span, so drop them."""
    return "`" + text.replace("`", "'") + "`"


# Markdown --------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    rule = {"l": "---", "r": "--:"}
    lines = [
        "| " + " | ".join(map(_md_cell, table.header)) + " |",
        "|" + "|".join(rule[a] for a in table.align) + "|",
    ]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
    return "\n".join(lines)


def _md_block(block: Block) -> str:
    match block:
        case Heading(text, level):
            return "#" * level + " " + text
        case Paragraph(text):
            return text
        case Bullets(items):
            return "\n".join(f"- {item}" for item in items)
        case Table():
            return _md_table(block)
        case Image(src, alt):
            return f"![{alt}]({src})"
    raise TypeError(f"unknown block {block!r}")


def to_markdown(blocks: Sequence[Block]) -> str:
    """The document as GitHub-flavoured markdown, blocks separated by one blank line."""
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# HTML ------------------------------------------------------------------------------------------

_CSS = """\
body { font-family: system-ui, sans-serif; max-width: 80rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; }
th { background: #f3f3f3; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; font-size: .9em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _inline(text: str) -> str:
    # Escape first; backticks survive escaping, so odd-numbered pieces are code spans.
    parts = html.escape(text, quote=True).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _html_row(cells: Sequence[str], align: Sequence[str], tag: str) -> str:
    tds = "".join(f'<{tag} class="{a}">{_inline(c)}</{tag}>' for c, a in zip(cells, align,
                                                                           strict=True))
    return f"<tr>{tds}</tr>"


def _html_table(table: Table) -> str:
    head = _html_row(table.header, table.align, "th")
    body = "\n".join(_html_row(row, table.align, "td") for row in table.rows)
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _html_block(block: Block) -> str:
    match block:
        case Heading(text, level):
            return f"<h{level}>{_inline(text)}</h{level}>"
        case Paragraph(text):
            return f"<p>{_inline(text)}</p>"
        case Bullets(items):
            lis = "\n".join(f"<li>{_inline(item)}</li>" for item in items)
            return f"<ul>\n{lis}\n</ul>"
        case Table():
            return _html_table(block)
        case Image(src, alt):
            return (f'<p><img src="{html.escape(src, quote=True)}" '
                    f'alt="{html.escape(alt, quote=True)}"></p>')
    raise TypeError(f"unknown block {block!r}")


def to_html(blocks: Sequence[Block], title: str) -> str:
    """The document as one HTML page with its CSS inline; images stay relative links."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>\n{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def write_document(out: Path, blocks: Sequence[Block], title: str) -> tuple[Path, Path]:
    """OUT/report.md and OUT/report.html from one block list (every nbdfork report's pair)."""
    md, page = out / "report.md", out / "report.html"
    md.write_text(to_markdown(blocks), encoding="utf-8")
    page.write_text(to_html(blocks, title), encoding="utf-8")
    return md, page
