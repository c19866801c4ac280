"""The report as Markdown (index.md) and HTML (index.html), both written from one list of blocks so the two
never disagree."""

from __future__ import annotations

import dataclasses
import html
import re
from collections.abc import Sequence

from jaxarch.report.results import ClaimResult, Table
from jaxarch.report.verdicts import Outcome, format_number

RULE = ("Each check compares one measured number with the thresholds stated beside it. It holds on the claim's "
        "side of the first threshold, does not hold past the second, and is inconclusive at this budget in "
        "between. A claim holds when all its checks hold, does not hold when any check does not, and is "
        "inconclusive otherwise, or whenever a precondition (what the comparison needs, such as a model having "
        "learned at all) is unmet. A number measured over several seeds is shown as its mean with the 95% "
        "Student-t interval of the mean and n; such a check holds only when the whole interval is on the claim's "
        "side of the first threshold, and does not hold only when the whole interval is past the second.")


@dataclasses.dataclass(frozen=True)
class Report:
    claims: tuple[ClaimResult, ...]
    budget: str
    command: str
    device: str
    date: str
    wall_seconds: float
    cpu_seconds: float  # all threads of the process: on a shared machine, the part of the wall time that was ours


# Blocks: ("heading", level, text) | ("paragraph", text) | ("table", Table) | ("image", file, caption)
# | ("verbatim", text). Paragraph text may use **bold** and `code`.


def _cell(value) -> str:
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return format_number(value)


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def blocks(report: Report) -> list[tuple]:
    out: list[tuple] = [
        ("heading", 1, "jaxarch report: the chapter's claims, measured"),
        ("paragraph", f"Written by `{report.command}` (budget **{report.budget}**) on {report.date}. Device: "
                      f"{report.device}. Wall time: **{duration(report.wall_seconds)}** (CPU time of the process, all threads: "
                      f"{duration(report.cpu_seconds)})."),
        ("paragraph", RULE),
        ("table", Table(("#", "claim", "verdict"),
                        tuple((c.number, c.title, c.verdict.value) for c in report.claims))),
    ]
    for claim in report.claims:
        out += [("heading", 2, f"{claim.number}. {claim.title}"),
                ("paragraph", f"**Claim.** {claim.claim}"),
                ("paragraph", f"**Method.** {claim.method}")]
        out += [("table", table) for table in claim.tables]
        out += [("image", figure.file, figure.caption) for figure in claim.figures]
        if claim.excerpt:
            out += [("paragraph", claim.excerpt_caption), ("verbatim", claim.excerpt)]
        checks = tuple((c.what, c.value_text(), c.holds_text(), c.fails_text(), c.outcome.value)
                       for c in claim.checks)
        out.append(("table", Table(("check", "measured", "holds if", "does not hold if", "outcome"), checks)))
        if claim.notes:
            out.append(("paragraph", claim.notes))
        out.append(("paragraph", f"**Verdict: {claim.verdict.value}.**"))
    return out


def _markdown_table(table: Table) -> list[str]:
    escape = lambda text: _cell(text).replace("|", "\\|").replace("\n", " ")
    lines = [f"*{table.caption}*", ""] if table.caption else []
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(escape(v) for v in row) + " |" for row in table.rows]
    return lines


def to_markdown(report: Report) -> str:
    lines: list[str] = []
    for block in blocks(report):
        kind = block[0]
        if kind == "heading":
            lines.append("#" * block[1] + " " + block[2])
        elif kind == "paragraph":
            lines.append(block[1])
        elif kind == "table":
            lines += _markdown_table(block[1])
        elif kind == "image":
            lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*"]
        elif kind == "verbatim":
            lines += ["```", block[1], "```"]
        lines.append("")
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html_table(table: Table) -> list[str]:
    lines = ["<table>"]
    if table.caption:
        lines.append(f"<caption>{_inline_html(table.caption)}</caption>")
    lines.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns) + "</tr>")
    for row in table.rows:
        cells = []
        for value in row:
            text = _cell(value)
            css = next((f' class="{o.name.lower()}"' for o in Outcome if text == o.value), "")
            cells.append(f"<td{css}>{html.escape(text)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return lines + ["</table>"]


_STYLE = """body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; }
caption { font-style: italic; text-align: left; } img { max-width: 100%; } figcaption { font-style: italic; }
td.holds { background: #d9f2d9; } td.fails { background: #f8d7d7; } td.inconclusive { background: #fcf3cf; }
pre { background: #f4f4f4; padding: 0.8em; overflow-x: auto; }"""


def to_html(report: Report) -> str:
    lines = ["<!DOCTYPE html>", '<html lang="en">', '<head><meta charset="utf-8">',
             "<title>jaxarch report</title>", f"<style>\n{_STYLE}\n</style>", "</head>", "<body>"]
    for block in blocks(report):
        kind = block[0]
        if kind == "heading":
            lines.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "paragraph":
            lines.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "table":
            lines += _html_table(block[1])
        elif kind == "image":
            lines.append(f'<figure><img src="{html.escape(block[1])}" alt="{html.escape(block[2])}">'
                         f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
        elif kind == "verbatim":
            lines.append(f"<pre>{html.escape(block[1])}</pre>")
    return "\n".join([*lines, "</body>", "</html>", ""])


def verdict_lines(claims: Sequence[ClaimResult]) -> str:
    """One line per claim, for the terminal."""
    return "\n".join(f"{c.number}. {c.title}: {c.verdict.value}" for c in claims)
