"""Render the report: a self-contained HTML page (images inlined as data URIs) and a Markdown page.

No script on the page: it must open offline, from a file, in any browser.
"""

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

# (frame column, header) of the ranked table, in order.
TABLE = (
    ("rank", "rank"),
    ("trial", "trial"),
    ("label", "setting"),
    ("status", "status"),
    ("score_ci", "score (95% CI)"),
    ("loss_eval_ci", "held-out loss (95% CI)"),
    ("loss_tokens_per_s", "loss tokens/s"),
    ("peak_vram_reserved_gib", "peak VRAM reserved (GiB)"),
    ("predicted_vram_reserved_gib", "predicted VRAM (GiB)"),
    ("peak_rss_gib", "peak RSS (GiB)"),
    ("params_trainable", "trainable params"),
    ("error", "reason"),
)
FIGURES = {
    "score_vs_rank": "Ranking metric vs LoRA rank, one line per variant, with 95% intervals",
    "loss_curves": "Training loss, all trials overlaid (grey dashed: failed or pruned); held-out "
    "loss with 95% intervals",
    "vram_vs_score": "Peak VRAM vs ranking metric with 95% intervals; the dashed step is the "
    "Pareto front",
    "throughput": "Train throughput per setting (grey: failed, OOM or pruned, with the reason)",
    "quant_dq": "nf4 vs fp4, with and without double quantization",
    "lm_eval": "lm-eval before -> after tuning, per task",
    "memory_model": "Memory model: predicted vs measured, and where the memory goes",
}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}
h1{margin-bottom:.2rem}.meta{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}
th,td{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.bad td{color:#999}.tag{padding:0 .4rem;border-radius:.3rem;font-size:.8rem}
.measured{background:#d8f3dc}.predicted{background:#ffe8cc}.none{background:#eee}
figure{margin:1rem 0 2rem}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9rem}code{background:#f6f6f6;padding:0 .2rem}
"""


def fmt(col: str, val: Any) -> str:
    """One table cell as text: units live in the header, not the cell."""
    if val is None or (isinstance(val, float) and math.isnan(val)):
        return "—"
    if col == "score":
        return f"{val:.3f}"
    if col == "loss_tokens_per_s":
        return f"{val:,.0f}" if val >= 100 else f"{val:.3g}"
    if col.endswith("_gib"):
        return f"{val:.1f}"
    if col == "params_trainable":
        return f"{val / 1e6:.1f}M" if val >= 1e6 else f"{val:,.0f}"
    if col == "rank":
        return str(int(val))
    return str(val)


def budget_cells(row: dict[str, Any]) -> list[str]:
    """(budget, answer, setting, needs, quality) of one budget row, as plain text."""
    if row["kind"] == "none":
        why = f"nothing fits ({row['closest']})" if row.get("closest") else "nothing fits"
        return [f"{row['budget_gib']:g}", "none", why, "—", "—"]
    need = f"{row['need_gib']:.1f}"
    if row["kind"] == "predicted":
        need += f" ± {row['error_pct']:.0f}%"
    change = f" ({row['changes']})" if row["changes"] else ""
    quality = row.get("quality") or (
        f"score {fmt('score', row['score'])}, {fmt('loss_tokens_per_s', row['tps'])} tok/s"
    )
    return [f"{row['budget_gib']:g}", row["kind"], f"{row['label']}{change}", need, quality]


def render_html(
    *, title: str, frame: pd.DataFrame, images: dict[str, Path], memory: dict[str, Any],
    budgets: list[dict[str, Any]], seeds: str, meta: str, absent: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """The whole page. ``images`` maps plot name -> PNG path; each is inlined as base64."""
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}"
             f"</title><style>{CSS}</style></head><body><h1>{e(title)}</h1>"
             f"<p class='meta'>{e(meta)}</p>"]  # fmt: skip
    parts.append("<h2>Which setting for my GPU budget?</h2><p>Best setting by the ranking "
                 "metric above that fits with a 10% margin on peak reserved VRAM; settings within "
                 "noise of the best tie, and the cheapest of them is named. <span class='tag "
                 "measured'>measured</span> = a trial of this sweep; <span class='tag "
                 "predicted'>predicted</span> = the memory model (± its held-out error), not "
                 "run.</p>")  # fmt: skip
    heads = ["budget (GiB)", "answer", "setting", "needs (GiB)", "measured quality"]
    rows = []
    for row in budgets:
        cells = budget_cells(row)
        cells[1] = f"<span class='tag {e(cells[1])}'>{e(cells[1])}</span>"
        rows.append([cells[0], cells[1], *(e(c) for c in cells[2:])])
    parts.append(_table(heads, rows))
    parts.append("<h2>Ranked trials</h2><p>Successful trials by score, then failed, OOM and "
                 "pruned ones (grey) with their reason.</p>")  # fmt: skip
    parts.append(_ranked_html(frame))
    for name, caption in FIGURES.items():
        if name in images:
            data = base64.b64encode(images[name].read_bytes()).decode("ascii")
            parts.append(f"<figure><h2>{e(caption)}</h2><img alt='{e(name)}' "
                         f"src='data:image/png;base64,{data}'><figcaption>{e(name)}.png"
                         "</figcaption></figure>")  # fmt: skip
        elif name in (absent or {}):
            parts.append(f"<p class='meta'>{e(absent[name])}</p>")
    parts.append(_memory_html(memory))
    parts.append(f"<h2>What fits where (predicted)</h2>{markdown_tables_html(seeds)}")
    parts.append("</body></html>")
    return "\n".join(parts)


def markdown_tables_html(text: str) -> str:
    """Markdown paragraphs and pipe tables (what harness.memory.table prints) as HTML: a table
    wraps to the page and its columns line up, where `<pre>` clipped it past the page width."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            out.append(_table(rows[0], rows[1:]))
            rows.clear()

    for line in text.splitlines():
        cells = [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|"):
            if not all(set(c) <= set("-: ") for c in cells):  # not the |---|---| rule
                rows.append(cells)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{html.escape(line.strip())}</p>")
    flush()
    return "\n".join(out)


def _table(heads: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """An HTML table of already-escaped cells; numeric-looking cells right-aligned."""
    out = ["<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in heads) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f" class='{classes[i]}'" if classes and classes[i] else ""
        tds = "".join(
            f"<td class='num'>{c}</td>" if c.replace(",", "").replace(".", "").isdigit()
            else f"<td>{c}</td>" for c in row
        )  # fmt: skip
        out.append(f"<tr{cls}>{tds}</tr>")
    return "\n".join(out) + "</tbody></table>"


def _ranked_html(frame: pd.DataFrame) -> str:
    rows, classes = [], []
    for _, r in frame.iterrows():
        rows.append([html.escape(fmt(c, r.get(c))) for c, _ in TABLE])
        classes.append("" if r["status"] == "success" else "bad")
    return _table([h for _, h in TABLE], rows, classes)


def _memory_html(memory: dict[str, Any]) -> str:
    err = memory["error"]
    rows = [[html.escape(str(r["label"])), f"{r['measured_gib']:.1f}", f"{r['predicted_gib']:.1f}",
             f"{r['error_pct']:+.1f}%"] for r in err["rows"]]  # fmt: skip
    return (
        f"<h2>Memory model</h2><p>{html.escape(memory['calibration'].describe())}. Held-out "
        f"mean absolute error <b>{err['mape_pct']:.1f}%</b> (max {err['max_ape_pct']:.1f}%; "
        f"{html.escape(err['basis'])}).</p>"
        + _table(["held-out trial", "measured (GiB)", "predicted (GiB)", "error"], rows)
    )


def render_markdown(
    *, title: str, frame: pd.DataFrame, images: dict[str, Path], memory: dict[str, Any],
    budgets: list[dict[str, Any]], seeds: str, meta: str, absent: dict[str, str] | None = None,
) -> str:  # fmt: skip
    """The Markdown summary; images are the PNGs beside it."""
    err, meta = memory["error"], html.escape(meta, quote=False)
    lines = [f"# {_md(title)}", "", meta, "", "## Which setting for my GPU budget?", "",
             "Best score that fits with a 10% margin on peak reserved VRAM; *predicted* rows come "
             "from the memory model (± its held-out error) and were not run.", "",
             "| budget (GiB) | answer | setting | needs (GiB) | measured quality |",
             "|---|---|---|---|---|"]  # fmt: skip
    lines += ["| " + " | ".join(_md(c) for c in budget_cells(r)) + " |" for r in budgets]
    lines += ["", "## Ranked trials", "", "| " + " | ".join(h for _, h in TABLE) + " |",
              "|" + "---|" * len(TABLE)]  # fmt: skip
    for _, r in frame.iterrows():
        lines.append("| " + " | ".join(_md(fmt(c, r.get(c))) for c, _ in TABLE) + " |")
    for name, caption in FIGURES.items():
        if name in images:
            lines += ["", f"## {caption}", "", f"![{name}]({images[name].name})"]
        elif name in (absent or {}):
            lines += ["", _md(absent[name])]
    lines += ["", "## Memory model", "", f"{memory['calibration'].describe()}. Held-out mean "
              f"absolute error {err['mape_pct']:.1f}% (max {err['max_ape_pct']:.1f}%; "
              f"{err['basis']}).", "", "## What fits where (predicted)", "", seeds, ""]  # fmt: skip
    return "\n".join(lines)


def _md(text: str) -> str:
    """A quoted value as inert Markdown text: no HTML, no table pipe, one line."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")
