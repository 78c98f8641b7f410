"""The report's documents: report.html (self-contained, pictures embedded) and report.md, their tables, and the
robustness summary `aggregate` prints. The figures come from `common.figures`, the rows from `common.report`.
"""

from __future__ import annotations

import base64
import html

import pandas as pd

from common.report import CHOSEN_BY, COPY_HEADINGS, HEADINGS, ROBUSTNESS, VariantResult, _cell, _num, columns
from common.status import FINISHED


def copy_rows(result: dict) -> list[dict]:
    """The best model's per-copy table: the originals first (accuracy only), then each kind of copy."""
    if not result.get("copies"):
        return []
    rows = [{"copy": f"originals ({result['images']} validation photos)", "accuracy": result["accuracy"]}]
    rows += [{"copy": name, **row} for name, row in result["copies"].items()]
    rows.append({"copy": "mean over the copies", "agreement": result["agreement"],
                 "trimmed_agreement": result["trimmed_agreement"]})
    return [{k: _cell(k, row.get(k)) for k in COPY_HEADINGS} for row in rows]


def robustness_text(summary: dict) -> str:
    """One line on the best model's robustness, or why it was not measured."""
    robust, name = summary["robustness"], summary["best"]["variant"]
    if robust.get("note"):
        return robust["note"]
    best = (robust.get("variants") or {}).get(name) or {}
    if "agreement" not in best:
        return f"robustness of {name}: {best.get('error', 'not measured')}"
    return (f"robustness of {name}: agreement {best['agreement']:.3f} (lowest {best['min_agreement']:.3f}) "
            f"with trimming off, {best['trimmed_agreement']:.3f} with trimming on")


def markdown_table(board: pd.DataFrame) -> str:
    cols = columns(board)
    lines = ["| " + " | ".join(HEADINGS[c] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in board.to_dict("records"):
        lines.append("| " + " | ".join(_cell(c, row[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines)


def html_table(board: pd.DataFrame, best: str) -> str:
    cols = columns(board)
    head = "".join(f"<th>{html.escape(HEADINGS[c])}</th>" for c in cols)
    body = []
    for row in board.to_dict("records"):
        cls = "best" if row["variant"] == best else ("" if row["state"] == FINISHED else "unfinished")
        cells = "".join(f'<td class="{c}">{html.escape(_cell(c, row[c]))}</td>' for c in cols)
        body.append(f'<tr class="{cls}" data-variant="{html.escape(row["variant"])}">{cells}</tr>')
    return (f'<div class="scroll"><table id="leaderboard"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


CLASS_METRICS = ("precision", "recall", "specificity", "f1", "support")


def class_rows(results: list[VariantResult], name: str) -> list[dict]:
    """The named variant's test metrics per class, in label order: the dataset's own class names."""
    r = next((r for r in results if r.name == name), None)
    per_class = r.split("test").get("per_class") or {} if r else {}
    return [{"class": c, **{k: (str(per_class[c][k]) if k == "support" else f"{_num(per_class[c].get(k)):.3f}")
                            for k in CLASS_METRICS}} for c in (r.classes if r else []) if c in per_class]


def class_table_html(rows: list[dict]) -> str:
    head = "".join(f"<th>{k}</th>" for k in ("class", *CLASS_METRICS))
    body = "".join("<tr>" + "".join(f'<td class="{k}">{html.escape(row[k])}</td>' for k in row) + "</tr>"
                   for row in rows)
    return (f'<div class="scroll"><table id="per-class"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>") if rows else ""


def robustness_html(summary: dict) -> str:
    """The robustness section: the best model's line and its per-copy table (or why nothing was measured)."""
    esc = html.escape
    best = summary["best"]["variant"]
    rows = copy_rows((summary["robustness"].get("variants") or {}).get(best) or {})
    head = "".join(f"<th>{esc(h)}</th>" for h in COPY_HEADINGS.values())
    body = "".join("<tr>" + "".join(f'<td class="{k}">{esc(row[k])}</td>' for k in COPY_HEADINGS) + "</tr>"
                   for row in rows)
    table_html = (f'<div class="scroll"><table id="robustness"><thead><tr>{head}</tr></thead><tbody>{body}'
                  "</tbody></table></div>") if rows else ""
    return (f"<section><h2>Robustness to the frame</h2><p>{esc(robustness_text(summary))}</p>{table_html}"
            f"<p class='note'>{esc(ROBUSTNESS)} Accuracy: against the true class.</p></section>")


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1f2937;background:#f3f6fa}
header{background:linear-gradient(120deg,#0c4a6e,#0e7490);color:#fff;padding:28px 40px}
header h1{margin:0 0 6px;font-size:28px} header p{margin:2px 0;opacity:.9}
main{padding:24px 40px;max-width:1400px}
section{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:18px 24px;margin:0 0 22px}
h2{margin-top:0;color:#0c4a6e} h3{color:#0e7490}
.cards{display:flex;gap:16px;flex-wrap:wrap}
.card{background:#ecfeff;border:1px solid #a5f3fc;border-radius:8px;padding:12px 18px;min-width:150px}
.card b{display:block;font-size:24px;color:#0c4a6e} .card span{font-size:13px;color:#475569}
.scroll{overflow-x:auto} table{border-collapse:collapse;width:100%;font-size:13px}
th{background:#0c4a6e;color:#fff;text-align:left;padding:8px;vertical-align:bottom}
td{padding:6px 8px;border-bottom:1px solid #e5e7eb} td.variant,td.state{white-space:nowrap}
tr.best td{background:#dcfce7;font-weight:600} tr.unfinished td{background:#fef2f2;color:#991b1b}
td.error{min-width:180px;font-size:12px;word-break:break-word}
img{max-width:100%;height:auto;display:block;margin:8px 0}
.note{color:#64748b;font-size:13px} code{background:#eef2f7;padding:1px 5px;border-radius:4px}
"""


def search_rows(rows: list[dict]) -> list[dict]:
    """A search's table as text cells: parameters to 3 significant digits, val accuracy to 3 decimals."""
    def cell(k, v):
        if k == "val_accuracy":
            return "" if v is None else f"{v:.3f}"
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return [{k: cell(k, v) for k, v in r.items()} for r in rows]


def searches_html(summary: dict, images: dict[str, bytes]) -> str:
    """One section per search: its trials' table and the picture of val accuracy against each parameter."""
    parts = []
    for name, rows in (summary.get("searches") or {}).items():
        cells = search_rows(rows)
        head = "".join(f"<th>{html.escape(k)}</th>" for k in (cells[0] if cells else {}))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in cells)
        parts.append(f"<section id='s-{html.escape(name)}'><h2>Search {html.escape(name)}</h2>"
                     f"<div class='scroll'><table class='search'><thead><tr>{head}</tr></thead><tbody>{body}"
                     "</tbody></table></div><p class='note'>epochs: how far each trial trained; pruned trials were "
                     "stopped at a rung by successive halving / Hyperband. Its best trial competes in the "
                     "leaderboard above.</p>" + _img(f"search_{name}.png", images, f"search {name}") + "</section>")
    return "".join(parts)


def searches_markdown(summary: dict) -> list[str]:
    lines = []
    for name, rows in (summary.get("searches") or {}).items():
        cells = search_rows(rows)
        if cells:
            lines += [f"## Search {name}", "", "| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
            lines += ["| " + " | ".join(r.values()) + " |" for r in cells] + ["", f"![search_{name}.png]"
                                                                                f"(search_{name}.png)", ""]
    return lines


def _img(name: str, images: dict[str, bytes], alt: str) -> str:
    if name not in images:
        return ""
    data = base64.b64encode(images[name]).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" data-file="{name}">'


def render_html(summary: dict, board: pd.DataFrame, results: list[VariantResult], images: dict[str, bytes]) -> str:
    """One self-contained page (PNG data URIs): it can be downloaded from S3 as a single file and still work."""
    best = summary["best"]
    esc = html.escape
    missing = "".join(f"<li><b>{esc(m['variant'])}</b>: {esc(m['state'])} {esc(m['error'])}</li>"
                      for m in summary["not_finished"])
    cards = "".join(f'<div class="card"><b>{v}</b><span>{esc(k)}</span></div>' for k, v in (
        ("best variant", esc(best["variant"])), ("validation accuracy", f"{best['val_accuracy']:.3f}"),
        ("test accuracy", f"{best['test_accuracy']:.3f}"),
        ("finished", f"{summary['finished']}/{summary['variants']}")))
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Sweep {esc(summary['sweep'])}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<header><h1>Aquarium sweep <code style='background:none;color:#fff'>{esc(summary['sweep'])}</code></h1>"
        f"<p>{summary['finished']} of {summary['variants']} variants finished &middot; generated "
        f"{esc(summary['generated_at'])}</p><p>store {esc(summary['store'])} &middot; dataset "
        f"{esc(str(summary['dataset_fingerprint']))}</p></header><main>",
        f"<section><h2>Best model</h2><div class='cards'>{cards}</div>"
        f"<p class='note'>Chosen by {esc(CHOSEN_BY)}. Copied to <code>{esc(summary['best_prefix'])}/</code>.</p>",
        _img("best_per_class.png", images, f"per-class metrics of {best['variant']}"),
        class_table_html(class_rows(results, best["variant"])), "</section>",
        f"<section><h2>Leaderboard</h2>{html_table(board, best['variant'])}"
        "<p class='note'>Precision, recall, specificity and F1 are macro averages on the test split; "
        "ranking uses validation only.</p>",
        _img("accuracy.png", images, "validation and test accuracy per variant"),
        f"<h3>Not finished</h3><ul>{missing}</ul>" if missing else "", "</section>",
        robustness_html(summary), searches_html(summary, images),
    ]
    for r in results:
        body = "".join(_img(f, images, f) for f in
                       (f"curves_{r.name}.png", f"confusion_{r.name}_test.png", f"confusion_{r.name}_val.png"))
        state = "" if r.finished else f" <small>({esc(r.state)})</small>"
        if body or r.finished:
            parts.append(f"<section id='v-{esc(r.name)}'><h2>{esc(r.name)}{state}</h2>"
                         f"<p class='note'>{esc(r.kind)}, layers {esc(r.layers)}, "
                         f"config {esc(r.config_hash)}</p>{body}</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def render_markdown(summary: dict, board: pd.DataFrame, results: list[VariantResult], images: dict[str, bytes]) -> str:
    best = summary["best"]
    lines = [f"# Aquarium sweep `{summary['sweep']}`", "",
             f"{summary['finished']} of {summary['variants']} variants finished; generated {summary['generated_at']}.",
             "", f"**Best: {best['variant']}** -- validation accuracy {best['val_accuracy']:.3f}, "
             f"test accuracy {best['test_accuracy']:.3f}. Chosen by {CHOSEN_BY}.", ""]
    classes = class_rows(results, best["variant"])
    if classes:
        lines += ["Per class, on the test split:", "", "| " + " | ".join(("class", *CLASS_METRICS)) + " |",
                  "|" + "---|" * (1 + len(CLASS_METRICS))]
        lines += ["| " + " | ".join(row.values()) + " |" for row in classes] + [""]
    lines += ["## Leaderboard", "", markdown_table(board), "",
              "Precision, recall, specificity and F1: macro averages on the test split.", "",
              "## Robustness to the frame", "", robustness_text(summary), ""]
    rows = copy_rows((summary["robustness"].get("variants") or {}).get(best["variant"]) or {})
    if rows:
        lines += ["| " + " | ".join(COPY_HEADINGS.values()) + " |", "|" + "---|" * len(COPY_HEADINGS)]
        lines += ["| " + " | ".join(row[k] for k in COPY_HEADINGS) + " |" for row in rows] + [""]
    lines += [ROBUSTNESS, ""] + searches_markdown(summary)
    for name in ("accuracy.png", "best_per_class.png"):
        if name in images:
            lines += [f"![{name}]({name})", ""]
    for r in results:
        shown = [f for f in (f"curves_{r.name}.png", f"confusion_{r.name}_test.png", f"confusion_{r.name}_val.png")
                 if f in images]
        if shown:
            lines += [f"## {r.name}", ""] + [f"![{f}]({f})\n" for f in shown]
    return "\n".join(lines)
