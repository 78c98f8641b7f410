"""The report's pictures: confusion matrices, learning curves, per-class metrics, accuracy per variant.

matplotlib's object API with the Agg canvas (a bare Figure keeps no pyplot state), one function per picture;
`pictures` names every PNG `report.write_report` embeds and stores.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from common.report import MACRO, VariantResult, _num
from common.status import FINISHED


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


def search_figure(search, rows: list[dict]):
    """A search's validation accuracy against each parameter: one panel per parameter, a point per trial; pruned
    trials hollow (their best val accuracy before they were stopped), finished ones filled."""
    keys = list(search.space)
    fig = _figure(3.2 * len(keys) + 0.6, 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(keys), sharey=True))
    for ax, key in zip(axes, keys):
        choices = search.space[key].choice
        for state, style in ((FINISHED, {"color": "tab:blue"}), ("pruned", {"facecolors": "none",
                                                                            "edgecolors": "tab:orange"})):
            shown = [r for r in rows if r["state"] == state and r["val_accuracy"] is not None]
            x = [choices.index(r[key]) if choices else r[key] for r in shown]
            ax.scatter(x, [r["val_accuracy"] for r in shown], label=state, **style)
        if choices:
            ax.set_xticks(range(len(choices)), [str(c) for c in choices])
        if search.space[key].loguniform:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"search {search.name}: {len(rows)} trials")
    return fig
