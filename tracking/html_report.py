"""One self-contained HTML page: sections of text, key/value tables and PNG figures inlined
as base64 data URIs, styles inline. No script, no external resource: it opens from disk
(file://) or as an e-mail attachment, without a server.
"""
from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mrlfads.atomic import write_atomic

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { margin-bottom: 0.2em; } .sub { color: #666; margin-top: 0; }
section { margin: 2.5em 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; max-width: 70em; }
table { border-collapse: collapse; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
nav a { margin-right: 1em; } p.note { color: #555; }
"""


@dataclass
class Section:
    """A titled part of the page: paragraphs, a table (first row: header), figures as
    (caption, PNG bytes)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: list[Sequence[str]] | None = None
    figures: list[tuple[str, bytes]] = field(default_factory=list)


def _anchor(i: int) -> str:
    return f"s{i}"


def render(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The page as a string; every text is escaped."""
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{esc(title)}</h1>"]
    if subtitle:
        out.append(f'<p class="sub">{esc(subtitle)}</p>')
    out.append("<nav>" + "".join(f'<a href="#{_anchor(i)}">{esc(s.title)}</a>'
                                 for i, s in enumerate(sections)) + "</nav>")
    n_fig = 0
    for i, s in enumerate(sections):
        out.append(f'<section id="{_anchor(i)}"><h2>{esc(s.title)}</h2>')
        out += [f'<p class="note">{esc(p)}</p>' for p in s.paragraphs]
        if s.table:
            head, *rows = s.table
            out.append("<table><tr>" + "".join(f"<th>{esc(str(c))}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                    for row in rows]
            out.append("</table>")
        for caption, png in s.figures:
            data = base64.b64encode(png).decode("ascii")
            out.append(f'<figure><img id="fig{n_fig}" alt="{esc(caption, quote=True)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}'
                       "</figcaption></figure>")
            n_fig += 1
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def write(path: str | os.PathLike, text: str) -> Path:
    """Write the page atomically (a temporary sibling renamed into place)."""
    return write_atomic(path, text)
