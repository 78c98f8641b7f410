"""Test data: variant artefacts written straight into a store following the README's layout contract, so the
report, predict and browser tests need no training. The model is a real (tiny) Keras model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from common.config import CLASSES, parse_sweep
from common.metrics import classification_metrics
from common.status import marker
from common.store import Store, join

SIZE = 24  # input size of the tiny model


def sweep_spec(names_kinds: list[tuple[str, str]], name: str = "rep"):
    variants = []
    for n, kind in names_kinds:
        v = {"name": n, "kind": kind, "epochs": 3}
        if kind == "finetune":
            v.update(image_size=64, weights="none", trainable_layers=7)
        variants.append(v)
    return parse_sweep({"name": name, "dataset": {"source": "x.zip"}, "defaults": {"image_size": 32},
                        "variants": variants})


def tiny_model_bytes(path: Path, size: int = SIZE, seed: int = 0, name: str | None = None) -> bytes:
    """A real model.keras: Standardize (the project's custom layer) -> conv -> softmax over the 7 classes, in
    float32 whatever precision the run's last variant set (tests compare its answers to float32 tolerances)."""
    import keras

    from common.models import Standardize

    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="image")
    x = Standardize()(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs, name=name)
    model.save(path)
    return path.read_bytes()


def split_metrics(accuracy: float, loss: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y_true = np.arange(28) % len(CLASSES)
    y_pred = np.where(rng.random(28) < accuracy, y_true, rng.integers(0, len(CLASSES), 28))
    out = classification_metrics(y_true, y_pred, list(CLASSES))
    out.update(accuracy=accuracy, loss=loss)
    return out


def write_variant(store: Store, sweep, name: str, val_acc=0.5, val_loss=1.0, test_acc=0.5, *,
                  model: bytes = b"", phase: str = "succeeded", error: str | None = None,
                  success_hash: str | None = None, finished: bool = True) -> None:
    """One variant's artefacts. finished=False leaves `_SUCCESS` out (a failed/running/interrupted variant)."""
    v = sweep.variant(name)
    prefix = sweep.variant_prefix(name)
    epochs = 3
    store.put_json(join(prefix, "config.json"), {"variant": v.model_dump(), "sweep": sweep.name,
                                                 "config_hash": v.config_hash, "dataset_fingerprint": "fp-123",
                                                 "versions": {}, "job": v.job})
    store.put_json(join(prefix, "status.json"), {
        "phase": phase, "epoch": epochs if finished else 1, "epochs": epochs, "best_val_accuracy": val_acc,
        "val_accuracy": val_acc, **marker(v), "started_at": "2026-01-01T10:00:00+00:00",
        "updated_at": "2026-01-01T10:01:00+00:00", "finished_at": "2026-01-01T10:01:00+00:00",
        "error": error, "exit_code": 0 if finished else 1})
    rows = ["epoch,loss,accuracy,val_loss,val_accuracy,lr"]
    rows += [f"{e},{2 - e * 0.3},{0.3 + e * 0.1},{2.1 - e * 0.3},{val_acc - (epochs - e) * 0.05},"
             f"{0.001 if e < 3 else 0.0002}" for e in range(1, epochs + 1)]
    store.put_text(join(prefix, "history.csv"), "\n".join(rows) + "\n")
    if not finished:
        return
    val, test = split_metrics(val_acc, val_loss, 1), split_metrics(test_acc, 1.2, 2)
    store.put_json(join(prefix, "metrics.json"), {
        "classes": list(CLASSES), "config_hash": v.config_hash, "val_accuracy": val_acc, "val_loss": val_loss,
        "test_accuracy": test_acc, "test_loss": 1.2, "best_epoch": 2, "val": val, "test": test})
    store.put_text(join(prefix, "predictions.csv"), "split,file,true,predicted\n")
    store.put_bytes(join(prefix, "model.keras"), model)
    store.put_text(join(prefix, "job.log"), "log\n")
    record = marker(v)
    if success_hash:  # a result of another config: stale
        record["config_hash"] = success_hash
    store.mark_complete(prefix, record)


def png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size
