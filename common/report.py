"""`aggregate` and `report`: read every variant's artefacts from the store, rank them, pick the best, report.

The best variant is chosen on **validation** accuracy (tie: lower validation loss, then name) and never on
test accuracy: the test split stays an unbiased estimate of the chosen model only if it played no part in
choosing it. Variants that did not finish are listed with their state and error instead of being dropped, so
a report never hides a failed run. Everything is read through the store, so the same code works on a local
folder and on S3.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

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


def _cell(col: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float) and col not in ("lr_factor",):
        return f"{value:.3f}"
    return str(value)


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


def search_tables(store: Store, sweep: Sweep) -> dict[str, list[dict]]:
    """Per search, one row per trial: its parameters, the epochs it ran, its validation accuracy (the best epoch's;
    of a pruned or running trial, the best so far) and its state (succeeded, pruned, running, failed)."""
    from common.search import param_values, search_of

    out = {}
    for search in sweep.searches:
        out[search.name] = []
        for v in sweep.variants:
            if search_of(sweep, v.name) is search:
                seen = status.read(store, sweep, v)
                val = (seen.record or {}).get("val_accuracy") if seen.finished else seen.status.get("best_val_accuracy")
                out[search.name].append({"trial": v.name, **param_values(v, search),
                                         "epochs": seen.status.get("epoch") or 0, "val_accuracy": val,
                                         "state": seen.state})
    return out


def write_report(store: Store, sweep: Sweep, results: list[VariantResult], best: VariantResult,
                 robust: dict) -> dict:
    """report.html, report.md, leaderboard.csv, report.json and the PNGs under `<sweep>/report/`, `_SUCCESS` last."""
    prefix = join(sweep.prefix, "report")
    from common.documents import render_html, render_markdown

    board = leaderboard(results, robust)
    summary = summarise(sweep, store, results, best, board, robust)
    summary["searches"] = search_tables(store, sweep)
    from common.figures import png, pictures, search_figure  # matplotlib only where pictures are drawn

    images = pictures(results, best, board)
    for search in sweep.searches:
        images[f"search_{search.name}.png"] = png(search_figure(search, summary["searches"][search.name]))
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
