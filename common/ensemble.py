"""The ensemble row of the leaderboard: the mean of the k best variants' probabilities, and a model that is it.

`aggregate` ranks the finished variants on validation and, with `ensemble_top_k: k` in the spec, averages
the probabilities the k best stored in their predictions.csv, for val and test: the ensemble's metrics come
from the same files as its members', without running a model. Its `model.keras` (under
`<sweep>/ensembles/<name>/`) has one input per input size of its members and averages their answers, so
`predict --model best` runs it like any model, each member on the photo preprocessed at its own size.

The ensemble competes on validation like any row. Its members were picked on validation too, so its
validation accuracy flatters it a little; the test split (never used to choose) tells how much.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import BadInput
from common.metrics import evaluation
from common.store import Store, join


def ensemble_name(k: int) -> str:
    return f"ensemble-top{k}"


def read_predictions(store: Store, prefix: str) -> pd.DataFrame:
    """A variant's predictions.csv: split, file, true, predicted, p_<class>..."""
    try:
        return pd.read_csv(io.BytesIO(store.get_bytes(join(prefix, "predictions.csv"))), keep_default_na=False)
    except (KeyError, ValueError, pd.errors.ParserError) as e:
        raise BadInput(f"{store.url(join(prefix, 'predictions.csv'))} is missing or unreadable ({e})") from None


def mean_predictions(store: Store, members: dict[str, str], classes: list[str]) -> tuple[dict, str]:
    """(metrics, predictions.csv) of the mean of the members' (name -> prefix) stored probabilities.

    The members must have classified the same photos of the same splits with the same classes (one prepared
    dataset): anything else is refused, since averaging misaligned rows would be silently wrong.
    """
    tables = {name: read_predictions(store, prefix) for name, prefix in members.items()}
    first_name, first = next(iter(tables.items()))
    columns = [f"p_{c}" for c in classes]
    for name, t in tables.items():
        if list(t.columns[4:]) != columns or not t[["split", "file", "true"]].equals(first[["split", "file", "true"]]):
            raise BadInput(f"ensemble: {name}'s predictions do not line up with {first_name}'s (other photos, "
                           "splits or classes): rerun both variants on the same prepared dataset")
    mean = np.mean([t[columns].to_numpy(np.float64) for t in tables.values()], axis=0)
    splits = {}
    for split in ("valid", "test"):
        rows = (first["split"] == split).to_numpy()
        labels = np.array([classes.index(c) for c in first.loc[rows, "true"]], dtype=np.int64)
        splits[split] = (labels, mean[rows], first.loc[rows, "file"].tolist())
    return evaluation(classes, splits)


def ensemble_model(members: list, name: str):
    """One Keras model: an input per distinct member input size (ascending), the mean of the members' outputs.

    The members stay nested models with their own names, so the saved file shows what the ensemble is made of.
    """
    import keras

    sizes = sorted({int(m.input_shape[1]) for m in members})
    inputs = {s: keras.Input((s, s, 3), name=f"image_{s}") for s in sizes}
    outputs = keras.layers.Average(name="mean", dtype="float32")([m(inputs[int(m.input_shape[1])]) for m in members])
    return keras.Model([inputs[s] for s in sizes], outputs, name=name)


def load_members(store: Store, members: dict[str, str], workdir: Path) -> list:
    """The members' saved models, in order; BadInput naming the first that cannot be loaded."""
    import keras

    import common.models  # noqa: F401  registers the custom layers before deserialising

    models = []
    for name, prefix in members.items():
        local = workdir / f"{name}.keras"
        try:
            store.download(join(prefix, "model.keras"), local)
            models.append(keras.models.load_model(local, compile=False))
        except Exception as e:  # missing, truncated or not a Keras file: this row fails, the report does not
            reason = " ".join(str(e).split())[:100]
            raise BadInput(f"ensemble: {name}'s model {store.url(join(prefix, 'model.keras'))} cannot be loaded "
                           f"({reason}): rerun that variant with --force") from None
    return models


def write_ensemble(store: Store, prefix: str, name: str, members: dict[str, str], classes: list[str],
                   member_info: dict) -> dict:
    """Write the ensemble's model.keras, predictions.csv and metrics.json under `prefix`, `_SUCCESS` last;
    returns its metrics. `member_info`: name -> what to record about each member (its config hash...)."""
    metrics, predictions = mean_predictions(store, members, classes)
    metrics["members"] = member_info
    store.delete_prefix(prefix)
    with tempfile.TemporaryDirectory(prefix="aquarium-ensemble-") as tmp:
        model = ensemble_model(load_members(store, members, Path(tmp)), name)
        model.save(Path(tmp) / "model.keras")
        store.upload(join(prefix, "model.keras"), Path(tmp) / "model.keras")
    store.put_text(join(prefix, "predictions.csv"), predictions)
    store.put_json(join(prefix, "metrics.json"), metrics)
    store.mark_complete(prefix, {"members": member_info})
    return metrics
