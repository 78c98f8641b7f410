"""Does a model answer for the photo or for its frame? Framed copies of photos, classified like `predict` does.

Training images are padded to a square with black bars, so a model can learn the bars. A user's photo arrives
letterboxed in another colour, with a border, cropped, mirrored or re-encoded. `robustness` makes such copies
from the original JPEGs, passes them through `predict`'s own preprocessing -- with border trimming off (the
model itself must be robust) and on (what `predict` does by default) -- and measures how often the model keeps
its answer on the original (agreement) and how often it is right (accuracy), per kind of copy.

A model enters as a `Classifier`: (JPEG bytes, trim) -> probabilities [N, classes]. `model_classifier` makes
one from a Keras model and its input size; `ensemble_classifier` averages several, each at its own input size.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from common.errors import BadInput

Classifier = Callable[[Sequence[bytes], bool], np.ndarray]
Transform = Callable[[Image.Image], Image.Image]
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


def model_classifier(model, size: int) -> Classifier:
    """A Classifier for one Keras model (or any callable on float32 [B,S,S,3]) that takes `size`-px input."""
    from common.predict import compiled, image_batches

    run = compiled(model, size)

    def classify(jpegs: Sequence[bytes], trim: bool) -> np.ndarray:
        parts, indices = [], []
        for index, images in image_batches(list(jpegs), size, trim, files=False):
            parts.append(np.asarray(run(images)))
            indices.append(index.numpy())
        if sum(map(len, indices)) != len(jpegs):
            missing = sorted(set(range(len(jpegs))) - set(np.concatenate(indices or [[]]).tolist()))
            raise BadInput(f"{len(missing)} of {len(jpegs)} images do not decode as JPEG (first: #{missing[0]})")
        return np.concatenate(parts)

    return classify


def ensemble_classifier(members: Sequence[Classifier]) -> Classifier:
    """The mean of several classifiers' probabilities (each preprocesses at its own input size)."""
    return lambda jpegs, trim: np.mean([member(jpegs, trim) for member in members], axis=0)


def robustness(classify: Classifier, jpegs: Sequence[bytes], labels: Sequence[int],
               copies: dict[str, tuple[Transform, int]] | None = None) -> dict:
    """Agreement with the model's answers on the originals, and accuracy, on each kind of framed copy.

    Returns {"images": N, "accuracy": on the originals, "copies": {name: {"accuracy", "agreement",
    "trimmed_accuracy", "trimmed_agreement"}}, "agreement"/"min_agreement": mean/min over the copies with
    trimming off, "trimmed_agreement"/"trimmed_min_agreement": the same with trimming on}. The reference answers
    are those on the originals with trimming off, i.e. exactly as `prepare` preprocessed the training photos.
    """
    if not len(jpegs) or len(jpegs) != len(labels):
        raise BadInput(f"robustness needs photos and one label each (got {len(jpegs)} photos, {len(labels)} labels)")
    labels = np.asarray(labels)
    reference = classify(jpegs, False).argmax(axis=1)
    result = {"images": len(jpegs), "accuracy": float(np.mean(reference == labels)), "copies": {}}
    for name, (transform, quality) in (COPIES if copies is None else copies).items():
        framed = [framed_copy(j, transform, quality) for j in jpegs]
        row = {}
        for prefix, trim in (("", False), ("trimmed_", True)):
            predicted = classify(framed, trim).argmax(axis=1)
            row[f"{prefix}accuracy"] = float(np.mean(predicted == labels))
            row[f"{prefix}agreement"] = float(np.mean(predicted == reference))
        result["copies"][name] = row
    for prefix in ("", "trimmed_"):
        values = [row[f"{prefix}agreement"] for row in result["copies"].values()]
        result[f"{prefix}agreement"] = float(np.mean(values)) if values else 1.0
        result[f"{prefix}min_agreement"] = float(np.min(values)) if values else 1.0
    return result
