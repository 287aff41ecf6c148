"""The comparison report: DIR/report.html and DIR/report.md, from a summary and the results.

`write_report(out_dir, summary, results)` renders both from the same table model:

- `results` is {model: {metric: {"value": float | list | None, "stderr": float | None, "settings": dict}}},
  the `vaelab eval --json` form; the model "data" is the test split scored against the training split.
- `summary` says everything else: title, data, budget, seed, command, protocol sentences, each model's
  status and settings, the table's columns (one protocol each), figures, flags and notes.

report.html is self-contained: inline CSS, every figure embedded as a data: URI, no script, no
network, so it opens from file://. Every string that comes from the summary or the results is
escaped with html.escape; a value whose settings say "converged": false is marked and listed among
the flags. report.md says the same in Markdown, with the figures as relative links.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import quote

from vaelab.files import atomic_write_bytes
from vaelab.version import __version__

DASH = "—"  # the model lacks the metric
WARNING = "⚠"  # the value did not converge
DATA_ROW = "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_FORMAT = ".4g"
TIMES = "\u00d7"  # the multiplication sign of "1x28x28"
LIST_SHOWN = 6  # leading items of a list-valued metric shown in a cell


@dataclass(frozen=True)
class Cell:
    """One table cell: the formatted estimate, and why it is marked (not converged) if it is."""

    text: str
    warning: str = ""
    tooltip: str = ""  # the estimate's settings, one line
    best: bool = False


@dataclass(frozen=True)
class Row:
    """One model's row: its cells in column order, or the error of a run that failed."""

    model: str
    cells: tuple[Cell, ...] = ()
    error: str | None = None
    is_data: bool = False


def write_report(out_dir: str | Path, summary: dict[str, Any], results: dict[str, Any]) -> tuple[Path, Path]:
    """Write out_dir/report.html and out_dir/report.md atomically; return (html path, md path).

    Both are rendered before either is written, so an error leaves the previous report whole."""
    out_dir = Path(out_dir)
    rows = table_rows(summary, results)
    flags = report_flags(summary, results)
    page = render_html(out_dir, summary, rows, flags)
    markdown = render_markdown(summary, rows, flags)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    atomic_write_bytes(html_path, page.encode("utf-8"))
    atomic_write_bytes(md_path, markdown.encode("utf-8"))
    return html_path, md_path


# -- the table model ------------------------------------------------------------------------------

def row_order(summary: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """The summary's models in order, then models only the results name, then "data" last."""
    names = [name for name in summary.get("models", {}) if name != DATA_ROW]
    names += [name for name in results if name not in names and name != DATA_ROW]
    if DATA_ROW in results or DATA_ROW in summary.get("models", {}):
        names.append(DATA_ROW)
    return names


def table_rows(summary: dict[str, Any], results: dict[str, Any]) -> list[Row]:
    """One Row per model (row_order), one cell per summary column; the best value of each column
    whose direction is known is marked among the models that ran (not the data row)."""
    columns = summary.get("columns", [])
    rows = [_row(name, summary.get("models", {}).get(name, {}), results.get(name, {}), columns)
            for name in row_order(summary, results)]
    for index, column in enumerate(columns):
        best = _best_row(rows, index, results, column)
        if best is not None:
            cells = list(rows[best].cells)
            cells[index] = Cell(cells[index].text, cells[index].warning, cells[index].tooltip, best=True)
            rows[best] = Row(rows[best].model, tuple(cells), rows[best].error, rows[best].is_data)
    return rows


def _row(name: str, status: dict[str, Any], metrics: dict[str, Any], columns: list[dict[str, Any]]) -> Row:
    if status.get("status", "ok") != "ok":
        return Row(name, error=str(status.get("error") or status.get("status") or "unknown error"))
    cells = tuple(_cell(metrics.get(column["key"]), column.get("format") or DEFAULT_FORMAT) for column in columns)
    return Row(name, cells, is_data=name == DATA_ROW)


def _cell(estimate: dict[str, Any] | None, spec: str) -> Cell:
    """"value ± stderr" in the column's format; DASH when the model lacks the metric."""
    if not isinstance(estimate, dict) or estimate.get("value") is None:
        return Cell(DASH)
    settings = estimate.get("settings") or {}
    warning = "not converged" if settings.get("converged") is False else ""
    return Cell(format_estimate(estimate, spec), warning, settings_line(settings))


def format_estimate(estimate: dict[str, Any], spec: str = DEFAULT_FORMAT) -> str:
    """"12.3 ± 0.4"; the stderr is left out when it is None, NaN or 0. A list shows its first items."""
    value, stderr = estimate.get("value"), estimate.get("stderr")
    if isinstance(value, list):
        shown = ", ".join(_number(item, spec) for item in value[:LIST_SHOWN])
        return f"{len(value)} values: {shown}{', …' if len(value) > LIST_SHOWN else ''}"
    text = _number(value, spec)
    if _is_number(stderr) and math.isfinite(stderr) and stderr != 0:
        text += f" ± {_number(stderr, spec)}"
    return text


def _number(value: Any, spec: str) -> str:
    if not _is_number(value):
        return str(value)
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("\u221e" if value > 0 else "\u2212\u221e")  # infinity, minus infinity
    try:
        return format(value, spec)
    except (ValueError, TypeError):  # a format the value does not take ("d" for a float)
        return format(value, DEFAULT_FORMAT)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _best_row(rows: list[Row], index: int, results: dict[str, Any], column: dict[str, Any]) -> int | None:
    """The row holding the column's best scalar value among two or more models that ran, or None."""
    higher = column.get("higher_is_better")
    if higher is None:
        return None
    values = {}
    for position, row in enumerate(rows):
        value = (results.get(row.model, {}).get(column["key"]) or {}).get("value")
        if row.error is None and not row.is_data and _is_number(value) and math.isfinite(value):
            values[position] = value
    if len(values) < 2:
        return None
    return (max if higher else min)(values, key=values.__getitem__)


def settings_line(settings: dict[str, Any], limit: int = 400) -> str:
    """The settings as one line "key=value; ...", nested values in compact JSON, at most `limit` characters."""
    parts = [f"{key}={value if isinstance(value, str) else json.dumps(value, default=str)}"
             for key, value in settings.items()]
    line = "; ".join(parts)
    return line if len(line) <= limit else line[:limit - 1] + "…"


def report_flags(summary: dict[str, Any], results: dict[str, Any]) -> list[str]:
    """The summary's flags, then one for every value marked not converged that no flag names yet."""
    flags = [str(flag) for flag in summary.get("flags", [])]
    for model, metrics in results.items():
        for metric, estimate in metrics.items():
            settings = (estimate or {}).get("settings") or {}
            if settings.get("converged") is False and not any(metric in f and model in f for f in flags):
                flags.append(f"{metric} of {model} did not converge (its settings say converged: false); "
                             "read it as a rough figure")
    return flags


def data_line(data: dict[str, Any]) -> str:
    """'fashion-mnist (source) · images 1x28x28 · train 1,000 · val 100 · test 200'."""
    parts = [str(data.get("name", "?")) + (f" ({data['source']})" if data.get("source") else "")]
    if data.get("image_shape"):
        parts.append("images " + TIMES.join(str(size) for size in data["image_shape"]))
    for split in ("train", "val", "test"):
        if data.get(split) is not None:
            count = data[split]
            parts.append(f"{split} {count:,}" if _is_number(count) else f"{split} {count}")
    return " · ".join(parts)


# -- HTML -----------------------------------------------------------------------------------------

def escape(value: Any) -> str:
    """Any value as text, safe in HTML element content and in quoted attributes."""
    return html.escape(str(value), quote=True)


def render_html(out_dir: Path, summary: dict[str, Any], rows: list[Row], flags: list[str]) -> str:
    """The whole self-contained page."""
    title = escape(summary.get("title", "vaelab comparison"))
    body = "\n".join([
        _html_header(summary),
        _html_list_box("flags", f"{WARNING} Warnings", flags),
        _html_list_box("protocol", "How these numbers were computed", summary.get("protocol", [])),
        _html_results(summary.get("columns", []), rows),
        _html_models(summary.get("models", {})),
        _html_figures(out_dir, summary.get("figures", [])),
        _html_list_box("notes", "Notes", summary.get("notes", [])),
        f'<footer>Written by vaelab {escape(__version__)}.</footer>',
    ])
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta name="color-scheme" content="light">\n<link rel="icon" href="data:,">\n'
            f'<title>{title}</title>\n<style>{CSS}</style>\n'
            f'</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n')


def _html_header(summary: dict[str, Any]) -> str:
    facts = [("Data", data_line(summary.get("data", {}))), ("Budget", summary.get("budget", "")),
             ("Seed", summary.get("seed", ""))]
    items = "".join(f"<div><dt>{escape(name)}</dt><dd>{escape(value)}</dd></div>"
                    for name, value in facts if value != "")
    command = summary.get("command")
    command_html = f'<pre class="command"><code>{escape(command)}</code></pre>' if command else ""
    return (f'<header><h1>{escape(summary.get("title", "vaelab comparison"))}</h1>'
            f'<dl class="facts">{items}</dl>{command_html}</header>')


def _html_list_box(kind: str, heading: str, lines: list[str]) -> str:
    """A titled box of sentences (flags, protocol, notes); nothing when there are none."""
    if not lines:
        return ""
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return f'<section class="box {kind}"><h2>{escape(heading)}</h2><ul>{items}</ul></section>'


def _html_results(columns: list[dict[str, Any]], rows: list[Row]) -> str:
    head = "".join(_html_column_header(column) for column in columns)
    body = "".join(_html_row(row, len(columns)) for row in rows)
    return (f'<section><h2>Results</h2><div class="table-wrap"><table class="results">'
            f'<thead><tr><th class="model">model</th>{head}</tr></thead><tbody>{body}</tbody></table></div>'
            f'<p class="key">↑ higher is better · ↓ lower is better · <b>bold</b>: best model in its column · '
            f'{WARNING} not converged (see the warnings) · {DASH} not measured for this model · '
            f'hover a number for its settings</p></section>')


def _html_column_header(column: dict[str, Any]) -> str:
    arrow = _arrow(column)
    return (f'<th title="{escape(column.get("key", ""))}">{escape(column.get("label", column.get("key", "")))}'
            f'{arrow}<span class="tag">{escape(column.get("protocol", ""))}</span></th>')


def _arrow(column: dict[str, Any]) -> str:
    """" ↑" when higher is better, " ↓" when lower is, "" when neither is said."""
    better = column.get("higher_is_better")
    return "" if better is None else (" ↑" if better else " ↓")


def _html_row(row: Row, width: int) -> str:
    name = f'<th class="model" scope="row">{escape(row.model)}</th>'
    if row.error is not None:
        return (f'<tr class="failed">{name}<td colspan="{max(width, 1)}" class="error">'
                f'failed: {escape(row.error)}</td></tr>')
    cells = "".join(_html_cell(cell) for cell in row.cells)
    row_class = ' class="data"' if row.is_data else ""
    return f"<tr{row_class}>{name}{cells}</tr>"


def _html_cell(cell: Cell) -> str:
    text = f"<b>{escape(cell.text)}</b>" if cell.best else escape(cell.text)
    if cell.warning:
        text += f' <span class="warn" title="{escape(cell.warning)}">{WARNING}</span>'
    tooltip = f' title="{escape(cell.tooltip)}"' if cell.tooltip else ""
    classes = "num" + (" missing" if cell.text == DASH else "") + (" unconverged" if cell.warning else "")
    return f'<td class="{classes}"{tooltip}>{text}</td>'


def _html_models(models: dict[str, Any]) -> str:
    if not models:
        return ""
    rows = "".join(
        f'<tr><th scope="row">{escape(name)}</th>'
        f'<td><span class="badge {"ok" if entry.get("status", "ok") == "ok" else "bad"}">'
        f'{escape(entry.get("status", "ok"))}</span></td>'
        f'<td><code>{escape(entry.get("settings", ""))}</code></td><td><code>{escape(entry.get("run_dir", ""))}'
        f'</code></td></tr>' for name, entry in models.items())
    return (f'<section><h2>Models</h2><div class="table-wrap"><table class="models"><thead><tr><th>model</th>'
            f'<th>status</th><th>settings</th><th>run directory</th></tr></thead><tbody>{rows}</tbody></table>'
            f'</div></section>')


def _html_figures(out_dir: Path, figures: list[dict[str, Any]]) -> str:
    if not figures:
        return ""
    return '<section><h2>Figures</h2>' + "".join(_html_figure(out_dir, figure) for figure in figures) + "</section>"


def _html_figure(out_dir: Path, figure: dict[str, Any]) -> str:
    """One figure, its PNG embedded as a data: URI; a note in its place when the file is not a PNG."""
    title, caption = escape(figure.get("title", "")), escape(figure.get("caption", ""))
    payload = _png_bytes(out_dir / str(figure.get("path", "")))
    if payload is None:
        picture = f'<p class="missing-figure">figure not found or not a PNG: {escape(figure.get("path", ""))}</p>'
    else:
        picture = f'<img alt="{title}" src="data:image/png;base64,{base64.b64encode(payload).decode("ascii")}">'
    return f'<figure>{picture}<figcaption><b>{title}</b>{" " + caption if caption else ""}</figcaption></figure>'


def _png_bytes(path: Path) -> bytes | None:
    try:
        payload = path.read_bytes()
    except OSError:
        return None
    return payload if payload.startswith(PNG_SIGNATURE) else None


CSS = """
:root { --ink: #1a202c; --muted: #5a6473; --line: #e2e8f0; --accent: #2b6cb0; --paper: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f6f9; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 32px 24px 48px; }
header { border-bottom: 4px solid var(--accent); padding-bottom: 16px; margin-bottom: 24px; }
h1 { font-size: 28px; margin: 0 0 12px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 0 0 12px; }
section { background: var(--paper); border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px;
  margin: 0 0 20px; box-shadow: 0 1px 2px rgba(26, 32, 44, 0.05); }
.facts { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0 0 12px; }
.facts dt { font-size: 12px; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); }
.facts dd { margin: 0; font-weight: 600; }
pre.command { margin: 0; padding: 10px 14px; background: #1f2933; color: #e6edf3; border-radius: 8px;
  overflow-x: auto; font-size: 13px; white-space: pre-wrap; word-break: break-all; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 0.9em; }
.box ul { margin: 0; padding-left: 20px; }
.box li { margin: 4px 0; }
.flags { background: #fffaf0; border-color: #f6ad55; border-left: 6px solid #dd6b20; }
.flags h2 { color: #9c4221; }
.protocol { background: #ebf4ff; border-color: #90cdf4; border-left: 6px solid var(--accent); }
.protocol h2 { color: #2c5282; }
.notes { background: #f7fafc; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 8px 12px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: #edf2f7; border-bottom: 2px solid #cbd5e0; font-weight: 600; white-space: nowrap; }
.results thead th:not(.model) { text-align: right; }
.tag { display: block; font-size: 11px; font-weight: 400; color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.missing { color: #a0aec0; }
td.unconverged { background: #fffaf0; }
.warn { color: #dd6b20; cursor: help; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #f0f5fb; }
tr.data th, tr.data td { font-style: italic; color: var(--muted); border-top: 2px solid #cbd5e0; }
tr.failed td.error { color: #9b2c2c; background: #fff5f5; white-space: normal; }
.models td code { white-space: normal; word-break: break-word; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600; }
.badge.ok { background: #c6f6d5; color: #22543d; }
.badge.bad { background: #fed7d7; color: #822727; }
.key { margin: 10px 0 0; font-size: 12px; color: var(--muted); }
figure { margin: 0 0 24px; }
figure:last-child { margin-bottom: 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px;
  background: #fff; }
figcaption { margin-top: 6px; font-size: 13px; color: var(--muted); }
figcaption b { color: var(--ink); margin-right: 4px; }
.missing-figure { color: #9b2c2c; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 12px; }
"""


# -- Markdown -------------------------------------------------------------------------------------

def md_text(value: Any) -> str:
    """Text safe in Markdown (and in its tables): no raw HTML, no cell breaks, one line."""
    return html.escape(" ".join(str(value).split()), quote=False).replace("|", "\\|")


def render_markdown(summary: dict[str, Any], rows: list[Row], flags: list[str]) -> str:
    """The report in Markdown: the same sections, the table as a Markdown table, figures as links."""
    parts = [f"# {md_text(summary.get('title', 'vaelab comparison'))}", _md_facts(summary)]
    if flags:
        parts.append(f"> **{WARNING} Warnings**\n>\n" + "\n".join(f"> - {md_text(flag)}" for flag in flags))
    parts.append(_md_list("How these numbers were computed", summary.get("protocol", [])))
    parts.append(_md_results(summary.get("columns", []), rows))
    parts.append(_md_models(summary.get("models", {})))
    parts.append(_md_figures(summary.get("figures", [])))
    parts.append(_md_list("Notes", summary.get("notes", [])))
    parts.append(f"---\nWritten by vaelab {__version__}.")
    return "\n\n".join(part for part in parts if part) + "\n"


def _md_facts(summary: dict[str, Any]) -> str:
    lines = [f"**Data:** {md_text(data_line(summary.get('data', {})))}"]
    if summary.get("budget") is not None:
        lines.append(f"**Budget:** {md_text(summary['budget'])}")
    if summary.get("seed") is not None:
        lines.append(f"**Seed:** {md_text(summary['seed'])}")
    if summary.get("command"):
        lines.append(f"**Command:** {_md_code(summary['command'])}")
    return "  \n".join(lines)


def _md_code(text: Any) -> str:
    """An inline code span that holds any text: fenced by one backtick more than the longest run inside."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if len(fence) > 1 else f"`{text}`"


def _md_list(heading: str, lines: list[str]) -> str:
    if not lines:
        return ""
    return f"## {heading}\n\n" + "\n".join(f"- {md_text(line)}" for line in lines)


def _md_results(columns: list[dict[str, Any]], rows: list[Row]) -> str:
    head = ["model"] + [_md_column_header(column) for column in columns]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join([_md_row_name(row), *_md_row_cells(row, len(columns))]) + " |")
    key = (f"↑ higher is better, ↓ lower is better; **bold**: best model in its column; {WARNING} not converged "
           f"(see the warnings); {DASH} not measured for this model.")
    return "## Results\n\n" + "\n".join(lines) + "\n\n" + key


def _md_column_header(column: dict[str, Any]) -> str:
    arrow = _arrow(column)
    tag = column.get("protocol")
    return md_text(column.get("label", column.get("key", ""))) + arrow + (f" ({md_text(tag)})" if tag else "")


def _md_row_name(row: Row) -> str:
    return f"*{md_text(row.model)}*" if row.is_data else md_text(row.model)


def _md_row_cells(row: Row, width: int) -> list[str]:
    if row.error is not None:
        return [f"failed: {md_text(row.error)}"] + [""] * (width - 1)
    cells = []
    for cell in row.cells:
        text = md_text(cell.text)
        text = f"**{text}**" if cell.best else text
        cells.append(text + (f" {WARNING}" if cell.warning else ""))
    return cells


def _md_models(models: dict[str, Any]) -> str:
    if not models:
        return ""
    lines = ["| model | status | settings | run directory |", "|---|---|---|---|"]
    lines += [f"| {md_text(name)} | {md_text(entry.get('status', 'ok'))} | {md_text(entry.get('settings', ''))} | "
              f"{md_text(entry.get('run_dir', ''))} |" for name, entry in models.items()]
    return "## Models\n\n" + "\n".join(lines)


def _md_figures(figures: list[dict[str, Any]]) -> str:
    if not figures:
        return ""
    parts = ["## Figures"]
    for figure in figures:
        title = md_text(figure.get("title", "")).replace("[", "\\[").replace("]", "\\]")
        link = quote(str(figure.get("path", "")).replace("\\", "/"))
        caption = md_text(figure.get("caption", ""))
        parts.append(f"### {title}\n\n![{title}]({link})" + (f"\n\n{caption}" if caption else ""))
    return "\n\n".join(parts)
