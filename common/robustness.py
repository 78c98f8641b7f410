"""Does a model answer for the photo or for its frame? Framed copies of photos, classified like `predict` does.

Training images are padded to a square with black bars, so a model can learn the bars. A user's photo arrives
letterboxed in another colour, with a border, cropped, mirrored or re-encoded. `robustness` makes such copies
from the original JPEGs, passes them through `predict`'s own preprocessing -- with border trimming off (the
model itself must be robust) and on (what `predict` does by default) -- and measures how often the model keeps
its answer on the original (agreement) and how often it is right (accuracy), per kind of copy.

A model enters as a `Classifier`: (JPEG bytes, trim) -> probabilities [N, classes]. `model_classifier` makes
one from a Keras model and its input sizes (an ensemble model, `common.ensemble`, has one input per size).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from common.errors import BadInput
from common.store import Store, join

NOT_MEASURED = "robustness: not measured (re-run `aquarium prepare --force` to keep the validation photos)"
Classifier = Callable[[Sequence[bytes], bool], np.ndarray]
Transform = Callable[[Image.Image], Image.Image]
COPIES_REVISION = 1  # bump when a copy's transform changes: stored measurements (MEASURED) are then redone
QUALITY = 92  # JPEG quality of a framed copy: what an editing tool writes; "reencode-q50" tests quality itself


def letterbox(colour: tuple[int, int, int]) -> Transform:
    """The photo centred on a square of `colour` (bars on its short side), as phone apps and editors do."""
    return lambda im: ImageOps.pad(im, (max(im.size), max(im.size)), color=colour)


def border(colour: tuple[int, int, int], share: float = 0.04) -> Transform:
    """A frame of `colour` all round, `share` of the longer side wide."""
    return lambda im: ImageOps.expand(im, border=max(2, round(share * max(im.size))), fill=colour)


def centre_crop(keep: float) -> Transform:
    """The central `keep` share of each side."""
    return lambda im: ImageOps.crop(im, (round(im.width * (1 - keep) / 2), round(im.height * (1 - keep) / 2)))


def half_size(im: Image.Image) -> Image.Image:
    return im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.Resampling.LANCZOS)


# name -> (transform of the decoded original, JPEG quality of the copy)
COPIES: dict[str, tuple[Transform, int]] = {
    "letterbox-black": (letterbox((0, 0, 0)), QUALITY),
    "letterbox-white": (letterbox((255, 255, 255)), QUALITY),
    "letterbox-grey": (letterbox((128, 128, 128)), QUALITY),
    "letterbox-blue": (letterbox((0, 70, 140)), QUALITY),
    "border-white": (border((255, 255, 255)), QUALITY),
    "border-black": (border((0, 0, 0)), QUALITY),
    "crop-80": (centre_crop(0.8), QUALITY),
    "mirror": (ImageOps.mirror, QUALITY),
    "half-size": (half_size, QUALITY),
    "reencode-q50": (lambda im: im, 50),
}


def framed_copy(jpeg: bytes, transform: Transform, quality: int) -> bytes:
    """Decode the original JPEG, transform it, encode it again as JPEG."""
    with Image.open(io.BytesIO(jpeg)) as im:
        out = transform(im.convert("RGB"))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class ModelClassifier:
    """A Classifier for one Keras model (or any callable on float32 [B,S,S,3]) with inputs of these sizes.

    `on_batches` classifies photos another caller already decoded at `sizes`: `robustness_of` decodes each copy
    once per set of input sizes and hands the same batches to every model of those sizes."""

    def __init__(self, model, sizes: int | tuple[int, ...]):
        from common.predict import compiled

        self.sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
        self.run = compiled(model, self.sizes)

    def __call__(self, jpegs: Sequence[bytes], trim: bool) -> np.ndarray:
        return self.on_batches(decoded(jpegs, self.sizes, trim), len(jpegs))

    def on_batches(self, batches, count: int) -> np.ndarray:
        parts, indices = [], []
        for index, images in batches:
            parts.append(np.asarray(self.run(*images)))
            indices.append(np.asarray(index))
        if sum(map(len, indices)) != count:
            missing = sorted(set(range(count)) - set(np.concatenate(indices or [[]]).tolist()))
            raise BadInput(f"{len(missing)} of {count} images do not decode as JPEG (first: #{missing[0]})")
        return np.concatenate(parts)


def model_classifier(model, sizes: int | tuple[int, ...]) -> ModelClassifier:
    return ModelClassifier(model, sizes)


def decoded(jpegs: Sequence[bytes], sizes: tuple[int, ...], trim: bool) -> list:
    """`predict`'s preprocessing of these JPEGs at each size, as a list of (indices, images) batches."""
    from common.predict import image_batches

    return [(index.numpy(), images) for index, images in image_batches(list(jpegs), sizes, trim, files=False)]


def classify_all(models: dict[str, Classifier], jpegs: Sequence[bytes], trim: bool) -> dict[str, np.ndarray]:
    """Every model's answers on the same photos, each photo decoded once per set of input sizes (decoding a
    full-size JPEG costs more than a small model's forward pass)."""
    out, by_sizes = {}, {}
    for name, classify in models.items():
        if isinstance(classify, ModelClassifier):
            by_sizes.setdefault(classify.sizes, []).append(name)
        else:
            out[name] = classify(jpegs, trim)
    for sizes, names in by_sizes.items():
        batches = decoded(jpegs, sizes, trim)
        for name in names:
            out[name] = models[name].on_batches(batches, len(jpegs))
    return out


def robustness(classify: Classifier, jpegs: Sequence[bytes], labels: Sequence[int],
               copies: dict[str, tuple[Transform, int]] | None = None) -> dict:
    """Agreement with the model's answers on the originals, and accuracy, on each kind of framed copy.

    Returns {"images": N, "accuracy": on the originals, "copies": {name: {"accuracy", "agreement",
    "trimmed_accuracy", "trimmed_agreement"}}, "agreement"/"min_agreement": mean/min over the copies with
    trimming off, "trimmed_agreement"/"trimmed_min_agreement": the same with trimming on}. The reference answers
    are those on the originals with trimming off, i.e. exactly as `prepare` preprocessed the training photos.
    """
    return robustness_of({"model": (classify, labels)}, jpegs, copies)["model"]


def robustness_of(models: dict[str, tuple[Classifier, Sequence[int]]], jpegs: Sequence[bytes],
                  copies: dict[str, tuple[Transform, int]] | None = None) -> dict[str, dict]:
    """`robustness` of several models (name -> (classifier, labels in its class order)) on the same photos.

    Copy-major: each kind of copy is made once for all models and dropped before the next, so the cost of
    making copies and the memory they take do not grow with the number of models.
    """
    for name, (_, labels) in models.items():
        if not len(jpegs) or len(jpegs) != len(labels):
            raise BadInput(f"robustness needs photos and one label each (got {len(jpegs)} photos, "
                           f"{len(labels)} labels)")
    results, references = {}, {}
    classifiers = {name: classify for name, (classify, _) in models.items()}
    originals = classify_all(classifiers, jpegs, False)
    for name, (_, labels) in models.items():
        references[name] = originals[name].argmax(axis=1)
        results[name] = {"images": len(jpegs), "accuracy": float(np.mean(references[name] == np.asarray(labels))),
                         "copies": {}}
    for copy, (transform, quality) in (COPIES if copies is None else copies).items():
        framed = [framed_copy(j, transform, quality) for j in jpegs]
        rows = {name: {} for name in models}
        for prefix, trim in (("", False), ("trimmed_", True)):
            answers = classify_all(classifiers, framed, trim)
            for name, (_, labels) in models.items():
                predicted = answers[name].argmax(axis=1)
                rows[name][f"{prefix}accuracy"] = float(np.mean(predicted == np.asarray(labels)))
                rows[name][f"{prefix}agreement"] = float(np.mean(predicted == references[name]))
        for name, row in rows.items():
            results[name]["copies"][copy] = row
    for result in results.values():
        for prefix in ("", "trimmed_"):
            values = [row[f"{prefix}agreement"] for row in result["copies"].values()]
            result[f"{prefix}agreement"] = float(np.mean(values)) if values else 1.0
            result[f"{prefix}min_agreement"] = float(np.min(values)) if values else 1.0
    return results


# ---------------------------------------------------------------- a sweep's variants, for `aggregate`

CHUNK = 256  # validation photos (and their framed copies) held at once: aggregate's memory stays bounded


def validation_rows(store: Store, data_prefix: str) -> list[tuple[str, str]] | None:
    """(class, store key) of every validation photo `prepare` keeps under `images/valid/<class>/`; None when the
    store has no labels.csv (a store without a dataset)."""
    try:
        table = store.get_text(join(data_prefix, "labels.csv"))
    except KeyError:
        return None
    rows = [r for r in csv.DictReader(io.StringIO(table)) if r.get("split") == "valid"]
    return [(r["label"], join(data_prefix, "images", "valid", r["label"], r["filename"])) for r in rows] or None


def fetch_photos(store: Store, rows: list[tuple[str, str]]) -> list[bytes] | None:
    """The JPEGs of `validation_rows`, read in parallel; None when one is missing (prepared before they were kept)."""
    try:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda row: store.get_bytes(row[1]), rows))
    except KeyError:
        return None


def validation_photos(store: Store, data_prefix: str) -> list[tuple[str, bytes]] | None:
    """(class, original JPEG) of every validation photo, all in memory (small tools and tests); None when the
    store lacks them."""
    rows = validation_rows(store, data_prefix)
    blobs = fetch_photos(store, rows) if rows else None
    return None if blobs is None else [(label, blob) for (label, _), blob in zip(rows, blobs)]


def merged(parts: list[dict]) -> dict:
    """One `robustness` result from results on consecutive chunks of the photos: every rate weighted by the
    chunk's photos, then the mean and minimum over the copies recomputed."""
    total = sum(p["images"] for p in parts)

    def mean(get):
        return float(sum(get(p) * p["images"] for p in parts) / total)

    out = {"images": total, "accuracy": mean(lambda p: p["accuracy"]),
           "copies": {c: {k: mean(lambda p: p["copies"][c][k]) for k in row} for c, row in parts[0]["copies"].items()}}
    for prefix in ("", "trimmed_"):
        values = [row[f"{prefix}agreement"] for row in out["copies"].values()]
        out[f"{prefix}agreement"] = float(np.mean(values)) if values else 1.0
        out[f"{prefix}min_agreement"] = float(np.min(values)) if values else 1.0
    return out


def load_variant(store: Store, variant_prefix: str):
    """A finished variant's model and classes, loaded and checked the way `predict` loads any model."""
    from common.predict import load

    with tempfile.TemporaryDirectory(prefix="aquarium-robustness-") as tmp:
        for name in ("model.keras", "metrics.json"):
            try:
                store.download(join(variant_prefix, name), Path(tmp) / name)
            except KeyError:
                pass  # predict.load names a missing model; missing metrics fall back to the class list
        return load(str(Path(tmp) / "model.keras"))


def measure_variants(store: Store, data_prefix: str, variant_prefixes: dict[str, str]) -> dict:
    """`robustness` of each named variant on framed copies of the validation photos, for the report.

    Returns {"note": None or why nothing was measured, "copies": names, "variants": {name: robustness(...) or
    {"error": why this one was not measured}}}. Never raises for a model or a store that cannot be measured:
    the report must still be written (the leaderboard and the selection do not depend on it).
    """
    photos = validation_rows(store, data_prefix)
    if photos is None or fetch_photos(store, photos[:1]) is None:
        return {"note": NOT_MEASURED, "copies": list(COPIES), "variants": {}}
    models, failed, kept, keys = {}, {}, {}, {}
    for name, prefix in variant_prefixes.items():
        keys[name] = measurement_key(store, prefix, photos)
        kept[name] = earlier_measurement(store, prefix, keys[name])
        if kept[name] is not None:
            continue
        try:
            loaded = load_variant(store, prefix)
            unknown = sorted({c for c, _ in photos} - set(loaded.classes))
            if unknown:
                raise BadInput(f"the model has no class {unknown[0]!r} of the validation photos")
            labels = [loaded.classes.index(c) for c, _ in photos]
            models[name] = (model_classifier(loaded.model, loaded.sizes), labels)
        except BadInput as e:
            failed[name] = {"error": f"not measured: {e}"}
    try:
        measured = {}
        for start in range(0, len(photos) if models else 0, CHUNK):  # CHUNK photos and their copies at a time
            jpegs = fetch_photos(store, photos[start:start + CHUNK])
            if jpegs is None:
                return {"note": NOT_MEASURED, "copies": list(COPIES), "variants": {}}
            part = robustness_of({n: (c, labels[start:start + CHUNK]) for n, (c, labels) in models.items()}, jpegs)
            for name, result in part.items():
                measured.setdefault(name, []).append(result)
        measured = {name: merged(parts) for name, parts in measured.items()}
        for name, result in measured.items():
            store.put_json(join(variant_prefixes[name], MEASURED), {"key": keys[name], "result": result})
    except BadInput as e:  # a stored photo that does not decode: the dataset, not one model
        return {"note": f"robustness: not measured ({e})", "copies": list(COPIES), "variants": {}}
    kept = {name: result for name, result in kept.items() if result is not None}
    return {"note": None, "copies": list(COPIES), "variants": {**kept, **measured, **failed}}


MEASURED = "robustness.json"  # a finished model's measurement, beside it: a rerun of aggregate measures new rows only


def measurement_key(store: Store, prefix: str, photos: list[tuple[str, str]]) -> str:
    """What a measurement depends on: the model (its prefix's `_SUCCESS` record: config hash, when it finished,
    an ensemble's members), the validation photos and the kinds of copy."""
    basis = {"model": store.is_complete(prefix), "photos": photos, "copies": [(c, q) for c, (_, q) in COPIES.items()],
             "revision": COPIES_REVISION}
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()


def earlier_measurement(store: Store, prefix: str, key: str) -> dict | None:
    """The stored measurement of this very model on these photos and copies, or None."""
    try:
        kept = store.get_json(join(prefix, MEASURED))
    except (KeyError, ValueError):
        return None
    return kept.get("result") if isinstance(kept, dict) and kept.get("key") == key else None
