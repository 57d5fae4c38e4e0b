"""One self-contained HTML page: inline CSS, images as base64 data URIs, no external references."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape


@dataclass
class Section:
    """One part of the report, rendered as Markdown and as HTML."""

    title: str
    notes: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)


HEADER_COLOR = "#27374d"
CSS = f"""
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 22px; margin: 0 0 12px; }}
h2 {{ font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ccc; }}
p.note {{ font-size: 13px; color: #444; max-width: 1100px; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 8px 0; }}
th {{ background: {HEADER_COLOR}; color: #fff; padding: 5px 7px; text-align: right; }}
td {{ padding: 4px 7px; text-align: right; border-bottom: 1px solid #ddd; white-space: nowrap; }}
th:first-child, td:first-child {{ text-align: left; }}
tr:nth-child(even) td {{ background: #eef2f7; }}
img {{ max-width: 100%; border: 1px solid #ddd; margin: 6px 12px 6px 0; }}
"""
MIME = {"png": "image/png", "svg": "image/svg+xml"}


def to_html(title: str, sections: list[Section], images: dict[str, bytes]) -> str:
    body = "".join(_section(s, images) for s in sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head>\n<body><h1>{escape(title)}</h1>\n{body}</body></html>\n"
    )


def _section(section: Section, images: dict[str, bytes]) -> str:
    parts = [f"<h2>{escape(section.title)}</h2>\n"]
    parts += [f'<p class="note">{escape(note)}</p>\n' for note in section.notes]
    if section.header:
        head = "".join(f"<th>{escape(h)}</th>" for h in section.header)
        rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>\n" for cells in section.rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>\n{rows}</tbody></table>\n")
    parts += [f'<img src="{data_uri(name, images[name])}" alt="{escape(alt)}">\n' for name, alt in section.images]
    return "".join(parts)


def data_uri(name: str, data: bytes) -> str:
    return f"data:{MIME[name.rsplit('.', 1)[-1]]};base64,{base64.b64encode(data).decode()}"
