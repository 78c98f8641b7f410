"""`predict`: classify photos with a trained model, preprocessed exactly as the training data was.

The model sees what `common.pipeline.decode_pad_resize` makes of a JPEG -- the same function `prepare` used
to build the training tensors -- at the size the model's input declares. Anything else (another resize, no
padding) would silently shift the input distribution and the accuracy with it.

A model is found by one reference: `best` (the sweep's chosen model), a store key or prefix
(`sweeps/aquarium/variants/cnn-a`), an `s3://` or `file://` URI, or a local path. Whatever it is, it is opened
as (store at the model's folder, file name), so the class list is read from the files beside the model.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import CLASSES, Sweep
from common.errors import BadInput
from common.store import Store, join, open_store

JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}
BATCH = 32


@dataclass
class LoadedModel:
    model: object  # keras.Model
    classes: list[str]
    size: int
    source: str


@dataclass
class Prediction:
    file: str
    probabilities: np.ndarray | None = None
    error: str = ""


def locate(ref: str, sweep: Sweep | None, store_uri: str | None) -> tuple[Store, str]:
    """(store opened at the model's folder, model file name) for any way of naming a model."""
    endpoint = sweep.endpoint if sweep else None
    if ref == "best":
        if sweep is None:
            raise BadInput("--model best needs the sweep: pass --config SWEEP.yaml (and --store if overridden)")
        ref, base = join(sweep.prefix, "best"), store_uri or sweep.store
    elif "://" in ref:
        base, ref = ref, ""
    elif Path(ref).expanduser().exists() or sweep is None and store_uri is None:
        base, ref = str(Path(ref).expanduser().resolve()), ""
    else:
        base = store_uri or sweep.store
    full = open_store(base, endpoint).url(ref) if ref else base
    folder, name = (full.rsplit("/", 1) if full.endswith(".keras") else (full.rstrip("/"), "model.keras"))
    return open_store(folder, endpoint), name


def read_classes(store: Store, num_outputs: int) -> list[str]:
    """Class names in label order, from the model card or metrics.json beside the model; the project's fixed
    class list only when neither exists and the model has exactly that many outputs."""
    for key in ("model_card.json", "metrics.json"):
        try:
            classes = store.get_json(key).get("classes")
        except (KeyError, ValueError):
            continue
        if classes:
            if len(classes) != num_outputs:
                raise BadInput(f"{store.url(key)} lists {len(classes)} classes but the model has {num_outputs} "
                               "outputs: the model and its card do not belong together")
            return list(classes)
    if num_outputs == len(CLASSES):
        return list(CLASSES)
    raise BadInput(f"no model_card.json or metrics.json with classes beside the model in {store.uri}: "
                   "copy one next to model.keras")


def load(ref: str, sweep: Sweep | None = None, store_uri: str | None = None) -> LoadedModel:
    """Fetch and load model.keras (with the project's custom layers registered) and its class names."""
    import keras

    import common.models  # noqa: F401  registers the custom Standardize layer before deserialising

    store, name = locate(ref, sweep, store_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.keras"
        try:
            store.download(name, local)
        except KeyError:
            hint = "run `aquarium aggregate` first" if ref == "best" else "check the path or store key"
            raise BadInput(f"no model at {store.url(name)}: {hint}") from None
        if not zipfile.is_zipfile(local):  # Keras would say "File not found" about a file that is right there
            raise BadInput(f"{store.url(name)} is not a Keras model file (a .keras file is a zip archive): pass "
                           "a model.keras saved by training, or --model best")
        try:
            model = keras.models.load_model(local, compile=False)
        except Exception as e:  # Keras raises ValueError, OSError, zipfile errors... for a bad file
            reason = " ".join(str(e).split())[:100]
            raise BadInput(f"{store.url(name)} is not a loadable Keras model ({reason}): pass a model.keras "
                           "saved by training") from None
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise BadInput(f"{store.url(name)} takes input {shape}, not square RGB images [S,S,3]")
    return LoadedModel(model, read_classes(store, int(model.output_shape[-1])), int(shape[1]), store.url(name))


def expand(paths: list[str]) -> tuple[list[str], list[str]]:
    """Files to classify: named files as given, JPEGs found under named folders; plus notes on skipped files."""
    files, notes = [], []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            files.append(p)
            continue
        found = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
        jpegs = [str(f) for f in found if f.suffix.lower() in JPEG_SUFFIXES]
        if len(found) > len(jpegs):
            notes.append(f"{p}: skipped {len(found) - len(jpegs)} non-JPEG files (by suffix)")
        files += jpegs
    return files, notes


def preprocess(path: str, size: int) -> np.ndarray:
    """float32 [size,size,3] in 0..255 via decode_pad_resize; BadInput for unreadable, non-JPEG or corrupt files."""
    import tensorflow as tf

    from common.pipeline import decode_pad_resize

    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise BadInput("is a folder") from None
    except OSError as e:
        raise BadInput(f"cannot read: {e.strerror or e}") from None
    if not data.startswith(b"\xff\xd8"):
        raise BadInput("not a JPEG image (the models are trained on JPEG photos; convert it to JPEG)")
    try:
        image = decode_pad_resize(tf.constant(data), size)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise BadInput(f"corrupt JPEG ({tf_reason(e)})") from None
    return tf.cast(image, tf.float32).numpy()


def tf_reason(e: Exception) -> str:
    """TensorFlow's error text without its op and function-node decorations."""
    text = (getattr(e, "message", "") or str(e)).strip().splitlines()[0]
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]|name:\s*$", "", text).strip()
    return text or type(e).__name__


def predict(loaded: LoadedModel, files: list[str]) -> list[Prediction]:
    """One Prediction per file, in order; a file that fails carries its error and does not stop the rest."""
    out, ready = [], []
    for f in files:
        try:
            ready.append((len(out), preprocess(f, loaded.size)))
        except BadInput as e:
            out.append(Prediction(f, error=str(e)))
            continue
        out.append(Prediction(f))
    for i in range(0, len(ready), BATCH):
        chunk = ready[i:i + BATCH]
        probs = np.asarray(loaded.model(np.stack([x for _, x in chunk]), training=False))
        for (index, _), p in zip(chunk, probs):
            out[index].probabilities = p
    return out


def csv_header(classes: list[str]) -> list[str]:
    return ["file", "predicted", *(f"p_{c}" for c in classes)]


def csv_row(p: Prediction, classes: list[str]) -> list[str]:
    return [p.file, classes[int(np.argmax(p.probabilities))], *(f"{x:.6f}" for x in p.probabilities)]
