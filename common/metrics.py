"""Classification metrics from true and predicted label indices.

Per class: precision, recall (= sensitivity), specificity, F1 and support; macro averages over the classes
that occur in the split (as true or predicted label), so a class absent from a small split neither helps nor
hurts the average; a ratio with a zero denominator counts as 0. Confusion matrices have rows = true,
columns = predicted, in `classes` order.
"""

from __future__ import annotations

import csv
import io

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict:
    """accuracy, per_class {precision, recall, specificity, f1, support}, macro, confusion."""
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    total = matrix.sum()
    per_class = {}
    for i, name in enumerate(classes):
        tp = matrix[i, i]
        fp = matrix[:, i].sum() - tp
        fn = matrix[i, :].sum() - tp
        tn = total - tp - fp - fn
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(matrix[i, :].sum()),
        }
    present = [name for i, name in enumerate(classes) if matrix[i, :].sum() or matrix[:, i].sum()]
    macro = {k: float(np.mean([per_class[c][k] for c in present])) if present else 0.0
             for k in ("precision", "recall", "specificity", "f1")}
    return {
        "accuracy": _ratio(np.trace(matrix), total),
        "per_class": per_class,
        "macro": macro,
        "confusion": matrix.tolist(),
    }


def cross_entropy(probabilities: np.ndarray, y_true) -> float:
    """Mean categorical cross-entropy of predicted probabilities (no label smoothing: the honest loss)."""
    p = np.clip(probabilities[np.arange(len(probabilities)), np.asarray(y_true)], 1e-7, 1.0)
    return float(-np.log(p).mean()) if len(p) else 0.0


SPLIT_KEYS = {"valid": "val", "test": "test"}  # predictions.csv split -> metrics.json key


def evaluation(classes: list[str], splits: dict[str, tuple]) -> tuple[dict, str]:
    """metrics.json content and predictions.csv text from each split's (true label indices, probabilities
    [N, classes], file names). One definition for a trained variant and for an ensemble of them."""
    metrics, rows = {"classes": list(classes)}, []
    for split, (labels, probs, filenames) in splits.items():
        key, probs = SPLIT_KEYS[split], np.asarray(probs).reshape(len(labels), len(classes))
        predicted = probs.argmax(axis=1)
        result = classification_metrics(labels, predicted, classes)
        result["loss"] = cross_entropy(probs, labels)
        metrics[key] = result
        metrics[f"{key}_accuracy"], metrics[f"{key}_loss"] = result["accuracy"], result["loss"]
        for name, t, p, pr in zip(filenames, labels, predicted, probs):
            rows.append([split, str(name), classes[t], classes[p], *(f"{x:.6f}" for x in pr)])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["split", "file", "true", "predicted", *(f"p_{c}" for c in classes)])
    writer.writerows(rows)
    return metrics, out.getvalue()
