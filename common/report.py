"""`aggregate` and `report`: read every variant's artefacts from the store, rank them, pick the best, report.

The best variant is chosen on **validation** accuracy (tie: lower validation loss, then name) and never on
test accuracy: the test split stays an unbiased estimate of the chosen model only if it played no part in
choosing it. Variants that did not finish are listed with their state and error instead of being dropped, so
a report never hides a failed run. Everything is read through the store, so the same code works on a local
folder and on S3.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common import status, table
from common.config import Sweep, Variant
from common.errors import EXIT_BAD_INPUT, AquariumError, BadInput
from common.status import FINISHED, read_json
from common.store import Store, join

CHOSEN_BY = "highest validation accuracy; ties broken by lower validation loss, then variant name (test never used)"
MACRO = ("precision", "recall", "specificity", "f1")
# leaderboard.csv column -> heading people read (terminal, HTML, Markdown)
HEADINGS = {
    "rank": "#", "variant": "variant", "kind": "kind", "layers": "layers", "lr_factor": "LR factor",
    "lr_patience": "LR patience", "compute": "compute", "best_epoch": "best epoch", "val_accuracy": "val acc",
    "robustness": "robustness", "robustness_trimmed": "robustness (trimmed)",
    "test_accuracy": "test acc", "test_precision": "precision", "test_recall": "recall (sensitivity)",
    "test_specificity": "specificity", "test_f1": "F1", "state": "state", "error": "error",
}
TEXT_COLUMNS = ("variant", "kind", "layers", "compute", "state", "error")  # left-aligned in the terminal; numbers go right
ROBUSTNESS = ("Robustness: how often the model keeps its answer on a validation photo when the photo comes "
              "letterboxed, framed, cropped, mirrored, half-size or re-encoded (mean agreement over those "
              "copies; predict's border trimming off, so the model itself; \"trimmed\": with it on).")
# per-copy table of the best model: robustness() key -> heading
COPY_HEADINGS = {"copy": "copy", "agreement": "agreement", "accuracy": "accuracy",
                 "trimmed_agreement": "agreement (trimmed)", "trimmed_accuracy": "accuracy (trimmed)"}


class NoFinishedVariants(AquariumError):
    """No variant of the sweep has a valid `_SUCCESS`: there is nothing to compare. Retrying aggregate cannot
    help (the variants must run first), so it is a configuration-class error for Kubernetes (exit 2)."""

    exit_code = EXIT_BAD_INPUT


@dataclass
class VariantResult:
    """What the store says about one variant of the spec."""

    variant: Variant
    state: str  # common.status's states
    error: str = ""
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    history: pd.DataFrame | None = None
    prefix: str = ""  # where its artefacts are in the store

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def kind(self) -> str:
        return self.variant.kind

    @property
    def layers(self) -> str:
        return layers_label(self.variant)

    @property
    def config_hash(self) -> str:
        return self.variant.config_hash

    @property
    def image_size(self) -> int | list[int]:
        return self.variant.image_size

    @property
    def card_config(self) -> dict:
        """What the model card says the model is."""
        return self.config or {"variant": self.variant.model_dump()}

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    def split(self, name: str) -> dict:
        return self.metrics.get(name) or {}

    @property
    def val_accuracy(self) -> float:
        return _num(self.metrics.get("val_accuracy", self.split("val").get("accuracy")))

    @property
    def val_loss(self) -> float:
        return _num(self.metrics.get("val_loss", self.split("val").get("loss")))

    @property
    def test_accuracy(self) -> float:
        return _num(self.metrics.get("test_accuracy", self.split("test").get("accuracy")))

    @property
    def classes(self) -> list[str]:
        return list(self.metrics.get("classes") or [])


@dataclass
class EnsembleResult(VariantResult):
    """The ensemble row (common.ensemble): the mean of `members`' probabilities; `variant` is None."""

    label: str = ""
    members: list[VariantResult] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.label

    @property
    def kind(self) -> str:
        return "ensemble"

    @property
    def layers(self) -> str:
        return "mean of " + ", ".join(m.name for m in self.members)

    @property
    def config_hash(self) -> str:
        return hashlib.sha256(" ".join(m.config_hash for m in self.members).encode()).hexdigest()[:12]

    @property
    def image_size(self) -> list[int]:
        return sorted({m.image_size for m in self.members})

    @property
    def card_config(self) -> dict:
        return {"ensemble": {m.name: m.card_config for m in self.members}}


def _num(x) -> float:
    """A metric as a float, NaN when absent, so missing values sort last and print as blanks."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _history(store: Store, key: str) -> pd.DataFrame | None:
    try:
        return pd.read_csv(io.BytesIO(store.get_bytes(key)))
    except (KeyError, ValueError, pd.errors.ParserError):
        return None


def read_variant(store: Store, sweep: Sweep, variant: Variant) -> VariantResult:
    """One variant: its state (common.status decides finished / stale / failed / running) and, when finished,
    its metrics -- a finished variant whose metrics.json is missing or unreadable counts as failed."""
    prefix = sweep.variant_prefix(variant.name)
    seen = status.read(store, sweep, variant)
    result = VariantResult(variant, seen.state, seen.error, seen.status, read_json(store, join(prefix, "config.json")),
                           prefix=prefix)
    if seen.state not in ("stale", "missing"):
        result.history = _history(store, join(prefix, "history.csv"))
    if seen.finished:
        result.metrics = read_json(store, join(prefix, "metrics.json"))
        if not result.metrics or "_unreadable" in result.metrics:
            result.state = "failed"
            result.error = result.metrics.get("_unreadable") or f"{store.url(join(prefix, 'metrics.json'))} is missing"
            result.metrics = {}
    return result


def collect(store: Store, sweep: Sweep) -> list[VariantResult]:
    """Every variant of the spec, in spec order."""
    return [read_variant(store, sweep, v) for v in sweep.variants]


def ensemble_row(store: Store, sweep: Sweep, results: list[VariantResult], write: bool) -> EnsembleResult | None:
    """The `ensemble_top_k` row: the mean of the k best finished variants by validation (fewer when fewer have
    finished; none below two). `write`: save its model and files (aggregate); else metrics only (report)."""
    from common import ensemble

    members = sorted((r for r in results if r.finished), key=selection_key)[:sweep.ensemble_top_k]
    if sweep.ensemble_top_k < 2 or len(members) < 2:
        return None
    label = ensemble.ensemble_name(len(members))
    row = EnsembleResult(None, FINISHED, config={"dataset_fingerprint": members[0].config.get("dataset_fingerprint")},
                         prefix=join(sweep.prefix, "ensembles", label), label=label, members=members)
    prefixes = {m.name: m.prefix for m in members}
    try:
        if any(m.classes != members[0].classes for m in members):
            raise BadInput(f"{label}: its members were trained on different class lists")
        if write:
            info = {m.name: {"config_hash": m.config_hash, "val_accuracy": m.val_accuracy} for m in members}
            row.metrics = ensemble.write_ensemble(store, row.prefix, label, prefixes, members[0].classes, info)
        else:
            row.metrics = ensemble.mean_predictions(store, prefixes, members[0].classes)[0]
    except BadInput as e:
        row.state, row.error = "failed", str(e)
    return row


def selection_key(r: VariantResult) -> tuple:
    """Sort key of the selection rule: val accuracy high first, then val loss low, then name. NaN sorts last."""
    acc, loss = r.val_accuracy, r.val_loss
    return (-acc if not math.isnan(acc) else math.inf, loss if not math.isnan(loss) else math.inf, r.name)


def choose_best(results: list[VariantResult]) -> VariantResult:
    """The finished variant with the best validation result (see CHOSEN_BY); raises when none finished."""
    finished = [r for r in results if r.finished]
    if not finished:
        states = ", ".join(f"{r.name} ({r.state})" for r in results)
        raise NoFinishedVariants(f"no finished variants to compare: {states}; run the variants first "
                                 "(aquarium sweep run, or their jobs) and then aggregate again")
    return min(finished, key=selection_key)


def layers_label(v: Variant) -> str:
    if v.kind == "cnn":
        return str(v.conv_layers)
    return f"MobileNetV3{v.backbone[0].upper()}/{v.trainable_layers} trainable"


def leaderboard(results: list[VariantResult], robust: dict | None = None) -> pd.DataFrame:
    """One row per variant: finished ones ranked by the selection rule, then the others in spec order. With
    `robust` (`robustness.measure_variants`), the robustness columns beside validation accuracy."""
    ranked = sorted((r for r in results if r.finished), key=selection_key)
    others = [r for r in results if not r.finished]
    rows = []
    for rank, r in enumerate(ranked + others, start=1):
        macro = r.split("test").get("macro") or {}
        best_epoch = r.metrics.get("best_epoch")
        rows.append({
            "rank": rank if r.finished else None, "variant": r.name, "kind": r.kind, "layers": r.layers,
            "lr_factor": r.variant.lr_factor if r.variant else None,
            "lr_patience": r.variant.lr_patience if r.variant else None,
            "compute": r.metrics.get("precision"), "best_epoch": best_epoch,
            "val_accuracy": r.val_accuracy, "val_loss": r.val_loss, "test_accuracy": r.test_accuracy,
            **{f"test_{k}": _num(macro.get(k)) for k in MACRO},
            "state": r.state, "error": r.error,
        })
    df = pd.DataFrame(rows)
    if robust is not None:
        measured = robust.get("variants", {})
        df["robustness"] = [_num((measured.get(v) or {}).get("agreement")) for v in df["variant"]]
        df["robustness_trimmed"] = [_num((measured.get(v) or {}).get("trimmed_agreement")) for v in df["variant"]]
    df["rank"] = df["rank"].astype("Int64")
    for col in ("best_epoch", "lr_patience"):  # whole numbers, with gaps (the ensemble row has neither)
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def columns(df: pd.DataFrame) -> list[str]:
    """The columns people see: every heading, the error column only when some variant has an error."""
    return [c for c in HEADINGS if c in df.columns and (c != "error" or df["error"].astype(bool).any())]


def format_table(df: pd.DataFrame) -> str:
    """The leaderboard for a terminal: numbers right-aligned with 3 decimals, text left, blanks for missing
    values, long errors cut; the error column only when some variant has an error."""
    cols = columns(df)
    rows = [{HEADINGS[c]: _cell(c, row[c]) for c in cols} for row in df.to_dict("records")]
    right = [HEADINGS[c] for c in cols if c not in TEXT_COLUMNS]
    return table.render(rows, right, max_width={HEADINGS["error"]: 80})


# ---------------------------------------------------------------- pictures (matplotlib, Agg, no pyplot state)

def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and keeps no global pyplot state

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def confusion_figure(matrix, classes: list[str], title: str):
    """Counts and row-normalised (recall per true class) side by side, class names on both axes."""
    from matplotlib.ticker import MaxNLocator

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig = _figure(11, 4.8)
    axes = fig.subplots(1, 2)
    for ax, data, label, fmt in ((axes[0], counts, "count", "{:.0f}"),
                                 (axes[1], normalised, "share of true class", "{:.2f}")):
        image = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(data.max(), 1e-9))
        ticks = range(len(classes))
        ax.set_xticks(ticks, classes, rotation=40, ha="right")
        ax.set_yticks(ticks, classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{title}: {label}")
        for (i, j), value in np.ndenumerate(data):
            if value:
                dark = value > 0.6 * data.max()
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=9,
                        color="white" if dark else "#1f2937")
        bar = fig.colorbar(image, ax=ax, shrink=0.8)
        if data is counts:
            bar.locator = MaxNLocator(integer=True)
            bar.update_ticks()
    return fig


def curves_figure(history: pd.DataFrame, title: str, best_epoch=None):
    """Loss and accuracy (train and validation) per epoch, and the learning rate ReduceLROnPlateau set."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(13, 3.8)
    axes = fig.subplots(1, 3)
    epoch = history["epoch"] if "epoch" in history else pd.Series(range(1, len(history) + 1))
    for ax, metric in ((axes[0], "loss"), (axes[1], "accuracy")):
        for col, label, style in ((metric, "train", "-"), (f"val_{metric}", "validation", "--")):
            if col in history:
                ax.plot(epoch, history[col], style, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(f"{title}: {metric}")
        ax.grid(alpha=0.3)
        if best_epoch is not None and not pd.isna(best_epoch):
            ax.axvline(best_epoch, color="#9ca3af", linestyle=":", label=f"best epoch {best_epoch}")
        ax.legend(fontsize=8)
    if "lr" in history:
        axes[2].plot(epoch, history["lr"], marker="o", markersize=3, color="#7c3aed")
        axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch")
    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_ylabel("learning rate")
    axes[2].set_title(f"{title}: learning rate")
    axes[2].grid(alpha=0.3)
    return fig


def per_class_figure(per_class: dict, classes: list[str], title: str):
    """Grouped bars: precision, recall, specificity and F1 for every class."""
    fig = _figure(12, 4.2)
    ax = fig.subplots()
    x = np.arange(len(classes))
    width = 0.2
    for i, metric in enumerate(MACRO):
        values = [_num((per_class.get(c) or {}).get(metric)) for c in classes]
        ax.bar(x + (i - 1.5) * width, values, width, label=metric)
    ax.set_xticks(x, classes)
    ax.set_xlabel("class")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def accuracy_figure(board: pd.DataFrame):
    """Validation and test accuracy of every finished variant, best (rank 1) on top."""
    done = board[board["state"] == FINISHED].iloc[::-1]
    fig = _figure(9, 0.5 * len(done) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(done))
    bars = ((0.2, "val_accuracy", "validation (chooses)"), (-0.2, "test_accuracy", "test (reported)"))
    for offset, col, label in bars:
        bars = ax.barh(y + offset, done[col], 0.4, label=label)
        ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
    ax.set_yticks(y, done["variant"])
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_ylabel("variant")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def pictures(results: list[VariantResult], best: VariantResult, board: pd.DataFrame) -> dict[str, bytes]:
    """Every PNG of the report by file name; closing figures is unnecessary (no pyplot registry)."""
    out = {"accuracy.png": png(accuracy_figure(board))}
    test = best.split("test")
    if test.get("per_class"):
        out["best_per_class.png"] = png(per_class_figure(
            test["per_class"], best.classes, f"{best.name}: per-class metrics on the test split"))
    for r in results:
        if r.history is not None and len(r.history):
            out[f"curves_{r.name}.png"] = png(curves_figure(r.history, r.name, r.metrics.get("best_epoch")))
        for split in ("test", "val"):
            matrix = r.split(split).get("confusion")
            if matrix and r.classes:
                out[f"confusion_{r.name}_{split}.png"] = png(confusion_figure(matrix, r.classes, f"{r.name} {split}"))
    return out


# ---------------------------------------------------------------- documents

def _cell(col: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and col not in ("lr_factor",):
        return f"{value:.3f}"
    return str(value)


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
        robustness_html(summary),
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
    lines += [ROBUSTNESS, ""]
    for name in ("accuracy.png", "best_per_class.png"):
        if name in images:
            lines += [f"![{name}]({name})", ""]
    for r in results:
        shown = [f for f in (f"curves_{r.name}.png", f"confusion_{r.name}_test.png", f"confusion_{r.name}_val.png")
                 if f in images]
        if shown:
            lines += [f"## {r.name}", ""] + [f"![{f}]({f})\n" for f in shown]
    return "\n".join(lines)


# ---------------------------------------------------------------- aggregate

def best_card(sweep: Sweep, best: VariantResult) -> dict:
    """What someone who finds `best/model.keras` needs to trust and use it."""
    return {
        "sweep": sweep.name, "variant": best.name, "kind": best.kind,
        "config_hash": best.config_hash, "config": best.card_config,
        "dataset_fingerprint": best.config.get("dataset_fingerprint"), "classes": best.classes,
        "image_size": best.image_size, "precision": best.metrics.get("precision"),
        "device_kind": best.metrics.get("device_kind"), "metrics": best.metrics, "chosen_by": CHOSEN_BY,
        "source": best.prefix + "/model.keras",
        "input": "float32 images 0..255 [S,S,3] from common.pipeline.decode_pad_resize (one input per size for an "
                 "ensemble); output softmax",
    }


def copy_best(store: Store, sweep: Sweep, best: VariantResult) -> str:
    """Copy the best model and its card to `<sweep>/best/`; the old `_SUCCESS` goes first, the new one last."""
    prefix = join(sweep.prefix, "best")
    store.delete_prefix(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.keras"
        store.download(join(best.prefix, "model.keras"), local)
        store.upload(join(prefix, "model.keras"), local)
    store.put_json(join(prefix, "model_card.json"), best_card(sweep, best))
    store.mark_complete(prefix, {"variant": best.name, "config_hash": best.config_hash})
    return prefix


def summarise(sweep: Sweep, store: Store, results: list[VariantResult], best: VariantResult,
              board: pd.DataFrame, robust: dict) -> dict:
    """report.json: the leaderboard as records plus the choice and what is missing."""
    records = board.astype(object).where(board.notna(), None).to_dict("records")
    return {
        "sweep": sweep.name, "store": store.uri,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "chosen_by": CHOSEN_BY, "variants": len(results), "finished": sum(r.finished for r in results),
        "best": {"variant": best.name, "val_accuracy": best.val_accuracy, "val_loss": best.val_loss,
                 "test_accuracy": best.test_accuracy, "config_hash": best.config_hash},
        "best_prefix": join(sweep.prefix, "best"),
        "dataset_fingerprint": best.config.get("dataset_fingerprint"),
        "not_finished": [{"variant": r.name, "state": r.state, "error": r.error} for r in results if not r.finished],
        "leaderboard": records, "robustness": robust,
    }


def write_report(store: Store, sweep: Sweep, results: list[VariantResult], best: VariantResult,
                 robust: dict) -> dict:
    """report.html, report.md, leaderboard.csv, report.json and the PNGs under `<sweep>/report/`, `_SUCCESS` last."""
    prefix = join(sweep.prefix, "report")
    board = leaderboard(results, robust)
    summary = summarise(sweep, store, results, best, board, robust)
    images = pictures(results, best, board)
    store.delete_prefix(prefix)  # a stale report (and its _SUCCESS) must never sit next to a new one
    for name, data in images.items():
        store.put_bytes(join(prefix, name), data)
    store.put_text(join(prefix, "leaderboard.csv"), board.to_csv(index=False))
    store.put_json(join(prefix, "report.json"), summary)
    store.put_text(join(prefix, "report.md"), render_markdown(summary, board, results, images))
    store.put_text(join(prefix, "report.html"), render_html(summary, board, results, images))
    store.mark_complete(prefix, {"best": best.name, "variants": len(results), "finished": summary["finished"]})
    return summary


def aggregate(store: Store, sweep: Sweep) -> tuple[dict, pd.DataFrame]:
    """The aggregate job: collect, choose on validation, copy the best model, measure robustness, write the report."""
    from common.robustness import measure_variants  # TensorFlow: only once there is something to measure

    results = collect(store, sweep)
    results += [row for row in [ensemble_row(store, sweep, results, write=True)] if row]
    best = choose_best(results)
    copy_best(store, sweep, best)
    robust = measure_variants(store, sweep.dataset.prefix, {r.name: r.prefix for r in results if r.finished})
    summary = write_report(store, sweep, results, best, robust)
    return summary, leaderboard(results, robust)
