"""The report's content as blocks, written once as self-contained HTML (images inline)
and once as markdown (images as PNG files beside it)."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

from schemas import layout  # noqa: E402


@dataclass
class Image:
    name: str  # file name of the PNG beside the markdown
    alt: str
    png: bytes


@dataclass
class Table:
    header: list[str]
    rows: list[list[object]]


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Table or Image

    def text(self, line: str) -> None:
        self.blocks.append(line)

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        self.blocks.append(Table(header, rows))

    def figure(self, name: str, alt: str, figure) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure)
        self.blocks.append(Image(name, alt, buffer.getvalue()))


def cell(value: object) -> str:
    if isinstance(value, float):
        return "0" if abs(value) < 1e-6 else f"{value:.4g}"  # float noise reads as zero
    return "" if value is None else str(value)


def to_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:.2em .5em;text-align:left}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        slug = section.title.lower().replace(" ", "-")
        parts.append(f'<section id="{html.escape(slug)}"><h2>{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row)
                               + "</tr>" for row in block.rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Image):
                data = base64.b64encode(block.png).decode()
                parts.append(f'<figure><img src="data:image/png;base64,{data}" '
                             f'alt="{html.escape(block.alt)}"><figcaption>'
                             f"{html.escape(block.alt)}</figcaption></figure>")
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(cell(v).replace("|", "/") for v in row) + " |"
                          for row in block.rows]
            elif isinstance(block, Image):
                lines.append(f"![{block.alt}]({block.name})")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


def write(out: Path, title: str, sections: list[Section]) -> None:
    """index.html, report.md and the markdown's PNGs into the directory ``out``."""
    (out / layout.REPORT_HTML).write_text(to_html(title, sections), encoding="utf-8")
    (out / layout.REPORT_MARKDOWN).write_text(to_markdown(title, sections), encoding="utf-8")
    for section in sections:
        for block in section.blocks:
            if isinstance(block, Image):
                (out / block.name).write_bytes(block.png)
