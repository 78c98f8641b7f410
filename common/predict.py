"""`predict`: classify photos with a trained model, preprocessed exactly as the training data was.

The model sees what `common.pipeline.decode_pad_resize` makes of a JPEG -- the same function `prepare` used
to build the training tensors -- at the size the model's input declares. Anything else (another resize, no
padding) would silently shift the input distribution and the accuracy with it. One step is added before it by
default: a uniform frame the photo arrived with (letterbox bars, a border) is trimmed (`pipeline.trim_borders`),
because the training photos had none but the black padding.

Photos stream through tf.data (parallel decoding, batches of BATCH, a row per photo as soon as its batch is
classified), so memory does not grow with the number of photos.

A model takes one input, or one per input size (an ensemble, `common.ensemble`): each input gets its own
`decode_pad_resize` of the photo at that size, as each member was trained.

A model is found by one reference: `best` (the sweep's chosen model), a store key or prefix
(`sweeps/aquarium/variants/cnn-a`), an `s3://` or `file://` URI, or a local path. Whatever it is, it is opened
as (store at the model's folder, file name), so the class list is read from the files beside the model.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import Sweep
from common.errors import BadInput
from common.store import Store, join, open_store

JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}
# Images per model call: enough to keep the CPU busy; at 224 px MobileNetV3's activations for 32 images add
# ~150 MB to the peak (bench/bench_predict.py), so predict's memory stays bounded with 16.
BATCH = 16


@dataclass
class LoadedModel:
    model: object  # keras.Model
    classes: list[str]
    sizes: tuple[int, ...]  # the square input size of each of the model's inputs, in input order
    source: str

    @property
    def size_text(self) -> str:
        return "+".join(map(str, self.sizes))


def input_sizes(model) -> tuple[int, ...] | None:
    """The side of each square RGB input [S,S,3] of a Keras model, or None for any other input."""
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    if not all(isinstance(s, tuple) and len(s) == 4 and s[1] == s[2] and s[3] == 3 for s in shapes):
        return None
    return tuple(int(s[1]) for s in shapes)


@dataclass
class Prediction:
    file: str
    probabilities: np.ndarray | None = None
    error: str = ""


def locate(ref: str, sweep: Sweep | None, store_uri: str | None) -> tuple[Store, str]:
    """(store opened at the model's folder, model file name) for any way of naming a model. A resolved sweep
    carries its store; `store_uri` counts only when there is no sweep."""
    endpoint = sweep.endpoint if sweep else None
    base_store = sweep.store if sweep else store_uri
    if ref == "best":
        if sweep is None:
            raise BadInput("--model best needs the sweep: pass --config SWEEP.yaml (and --store if overridden)")
        ref, base = join(sweep.prefix, "best"), base_store
    elif "://" in ref:
        base, ref = ref, ""
    elif Path(ref).expanduser().exists() or base_store is None:
        base, ref = str(Path(ref).expanduser().resolve()), ""
    else:
        base = base_store
    full = open_store(base, endpoint).url(ref) if ref else base
    folder, name = (full.rsplit("/", 1) if full.endswith(".keras") else (full.rstrip("/"), "model.keras"))
    return open_store(folder, endpoint), name


def read_classes(store: Store, num_outputs: int) -> list[str]:
    """Class names in label order, from the model card or metrics.json beside the model (a model trained on
    another dataset has other classes, so there is no fallback list)."""
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
    sizes = input_sizes(model)
    if sizes is None:
        raise BadInput(f"{store.url(name)} takes input {model.input_shape}, not square RGB images [S,S,3]")
    return LoadedModel(model, read_classes(store, int(model.output_shape[-1])), sizes, store.url(name))


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


def preprocess(path: str, sizes: tuple[int, ...], trim: bool = True) -> list[np.ndarray]:
    """float32 [S,S,3] in 0..255 via decode_pad_resize at each size, one file; BadInput for unreadable, non-JPEG
    or corrupt files. The streaming path drops a file that fails; this names the reason."""
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
        images = [decode_pad_resize(tf.constant(data), size, trim=trim) for size in sizes]
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        raise BadInput(f"corrupt JPEG ({tf_reason(e)})") from None
    return [tf.cast(image, tf.float32).numpy() for image in images]


def tf_reason(e: Exception) -> str:
    """TensorFlow's error text without its op and function-node decorations."""
    text = (getattr(e, "message", "") or str(e)).strip().splitlines()[0]
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]|name:\s*$", "", text).strip()
    return text or type(e).__name__


def image_batches(sources: list, sizes: tuple[int, ...], trim: bool, files: bool, batch: int = BATCH):
    """tf.data of (index int64 [B], (float32 images [B,S,S,3] at each size)) from file paths (`files`) or JPEG
    bytes.

    The same decode_pad_resize as `prepare` (plus border trimming when `trim`), in parallel and in order. An
    element that cannot be read or decoded is dropped instead of ending the stream; the gap in the indices tells
    the caller which one to diagnose. Only a few batches are in flight, so memory does not grow with the count.
    """
    import tensorflow as tf

    from common.pipeline import decode_pad_resize

    def load(index, source):
        data = tf.io.read_file(source) if files else source
        tf.debugging.assert_equal(tf.strings.substr(data, 0, 2), b"\xff\xd8", message="not a JPEG")
        return index, tuple(tf.cast(decode_pad_resize(data, size, trim=trim), tf.float32) for size in sizes)

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(sources, tf.string)).enumerate()
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    return ds.batch(batch).prefetch(2)


def compiled(model, sizes: tuple[int, ...]):
    """The model as one traced function of the images at each input size, for any batch size: no retracing for
    the last, shorter batch."""
    import tensorflow as tf

    specs = [tf.TensorSpec([None, size, size, 3], tf.float32) for size in sizes]
    return tf.function(lambda *x: model(x[0] if len(x) == 1 else list(x), training=False), input_signature=specs)


def classify(loaded: LoadedModel, files: list[str], trim: bool = True,
             batch: int = BATCH) -> Iterator[Prediction]:
    """One Prediction per file, in input order, yielded as soon as its batch is classified. A file that fails
    carries its error (found by `preprocess` on that file alone) and does not stop the rest."""
    run = compiled(loaded.model, loaded.sizes)

    def one(i: int) -> Prediction:  # a file the stream dropped: name the reason (or classify it, if it reads now)
        try:
            images = preprocess(files[i], loaded.sizes, trim)
            return Prediction(files[i], np.asarray(run(*(image[None] for image in images)))[0])
        except BadInput as e:
            return Prediction(files[i], error=str(e))

    done = 0
    for indices, images in image_batches(files, loaded.sizes, trim, files=True, batch=batch):
        for i, p in zip(indices.numpy(), np.asarray(run(*images))):
            yield from (one(j) for j in range(done, i))
            yield Prediction(files[i], p)
            done = i + 1
    yield from (one(j) for j in range(done, len(files)))


@contextmanager
def progress_bar(total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar on stderr while stderr is a terminal (nothing in logs and pipes); yields `advance()`.

    Lines written to stderr meanwhile (the per-file errors) appear above the bar.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal, redirect_stdout=False) as bar:
        task = bar.add_task("classifying", total=total)
        yield lambda: bar.advance(task)


def csv_header(classes: list[str]) -> list[str]:
    return ["file", "predicted", *(f"p_{c}" for c in classes)]


def csv_row(p: Prediction, classes: list[str]) -> list[str]:
    return [p.file, classes[int(np.argmax(p.probabilities))], *(f"{x:.6f}" for x in p.probabilities)]
