"""Bounding boxes to one label per photo: validate the box rows, decide the classes, pick the dominant class.

The classifiers need one class per photo, but a detection export has one row per bounding box. The seed
report's rule labels a photo with the class that has the largest (sum of its box areas) x (number of its boxes):
big animals win through area, schools of small ones through count. Ties (rare: equal scores) go to the class
with more boxes, then to the class that comes first in the dataset's class order, so labels never depend on
row order. The class order is `dataset.classes` when the spec lists it, else the sorted class names found in
the training split (`resolve_classes`).

Every export format (`common/data/formats.py`) arrives here as the same `Annotations`: box rows in the CSV's
columns, each with its place in the export. Every row is validated before anything is labelled, because a
silently wrong label is worse than a failed job: the first problem is reported as one line naming the file and
row (or JSON entry, or label-file line), with how to fix it.
"""

from __future__ import annotations

import hashlib
import io
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import class_name_problem
from common.errors import BadInput

COLUMNS = ["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]
NUMERIC = ["width", "height", "xmin", "ymin", "xmax", "ymax"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TOLERANCE = 1.0  # px a box may stick out of the image: the CSVs were converted from YOLO labels (±1 px)
RING = 3  # px: width of the ring around a box whose mean colour paints the box away (synthesize)
SYNTH_PREFIX = "synth-"

_FIX_ROW = "fix or remove the box (boxes are in the image's pixels, inside the image)"


@dataclass(frozen=True)
class Box:
    cls: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def area(self) -> float:
        return (self.xmax - self.xmin) * (self.ymax - self.ymin)


@dataclass
class Labelled:
    """One photo with its dominant class. `jpeg` is filled in by a caller that holds the bytes; `prepare` keeps
    only `path` and the bytes' `digest`, so its memory does not grow with the number of photos."""

    split: str
    filename: str
    label: str
    score: float
    boxes: list[Box]
    path: Path | None = None
    jpeg: bytes = field(default=b"", repr=False)
    digest: str = ""  # sha256 of the photo's bytes when `jpeg` is not held

    @property
    def sha256(self) -> str:
        return self.digest or hashlib.sha256(self.jpeg).hexdigest()


def ranking(boxes: list[Box], classes) -> list[tuple[str, float, int]]:
    """(class, score, boxes) for every class present, best first: score = sum of areas x box count.

    Ties: more boxes first, then the order of `classes`.
    """
    area: dict[str, float] = {}
    count: dict[str, int] = {}
    for b in boxes:
        area[b.cls] = area.get(b.cls, 0.0) + b.area
        count[b.cls] = count.get(b.cls, 0) + 1
    scored = [(c, area[c] * count[c], count[c]) for c in area]
    return sorted(scored, key=lambda t: (-t[1], -t[2], classes.index(t[0])))


def dominant(boxes: list[Box], classes) -> tuple[str, float]:
    """The photo's label and its score (see `ranking`)."""
    cls, score, _ = ranking(boxes, classes)[0]
    return cls, score


def _open_image(path: Path) -> tuple[int, int]:
    """Decode the image (at 1/8 scale in the DCT domain: cheap, but reads every byte); return (width, height).

    Raises ValueError with a short reason when it is not a decodable JPEG.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.format != "JPEG":
                raise ValueError(f"it is {img.format or 'not an image'}, not JPEG")
            size = img.size
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.load()
            return size
    except ValueError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, UnidentifiedImageError, ...
        raise ValueError(str(e) or type(e).__name__) from None


def split_images(split_dir: Path) -> list[str]:
    """Image files in a split folder, sorted."""
    return sorted(p.name for p in split_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def drop_duplicate_rows(df: pd.DataFrame, where: str, warn=_warn) -> pd.DataFrame:
    """An exact duplicate row is the same box listed twice (an export glitch, not a second animal at the same
    pixels). Kept, it would count the box twice and could flip the photo's label; so it is dropped, with one
    warning line naming the file and the rows (1-based, as in the error lines)."""
    dupes = df.duplicated(keep="first")
    if dupes.any():
        rows = [int(i) + 1 for i in df.index[dupes.to_numpy()]]
        shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
        warn(f"warning: {where}: dropped {len(rows)} exact duplicate box row(s) ({shown}): each repeats an "
             "earlier row; a box counts once in the label")
    return df[~dupes]


def _first_problem(ann: "Annotations", problems: list[tuple[int, str, str]], df: pd.DataFrame) -> str:
    """The first bad row as one line; the same image's other rows with the very same problem (an undecodable
    photo's other boxes) are not counted as more bad rows."""
    row, what, fix = problems[0]
    others = sum(1 for i, w, _ in problems[1:] if (df.at[i, "filename"], w) != (df.at[row, "filename"], what))
    more = f" ({others} more bad rows in {ann.scope})" if others else ""
    return f"{ann.at[row]}: {what}: {fix}{more}"


@dataclass
class Annotations:
    """One split of an export, whatever its format: box rows in the CSV's columns, each with its place.

    `df` holds COLUMNS as stripped strings (row index 0..n-1); `at[i]` names row i the way the user finds it
    ("valid/_annotations.csv row 3 (line 4)", "train/_annotations.coco.json annotations[7]", ...). A
    one-folder-per-class split has no rows: `folder_labels` maps each image to its folder instead.
    """

    split: str  # train / valid / test: the store's names, whatever the folder is called
    folder: Path  # where the images are
    place: str  # that folder as the user sees it in the zip: "valid/", "train/images/"
    source: str  # the annotation file(s), for "no bounding boxes in ..." and warnings
    images: list[str]  # every image file of the split (names relative to `folder`)
    df: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS))
    at: list[str] = field(default_factory=list)
    scope: str = "this file"  # where the "N more bad rows" are
    folder_labels: dict[str, str] | None = None  # one folder per class: image name -> class (its folder)
    declared: tuple[str, ...] = ()  # the classes the export declares (COCO categories, YOLO names, folders)

    def path(self, name: str) -> Path:
        return self.folder / self.folder_labels[name] / name if self.folder_labels is not None else self.folder / name

    def found_classes(self) -> set[str]:
        return set(self.folder_labels.values()) if self.folder_labels is not None else set(self.df["class"])


def resolve_classes(train: Annotations, given) -> tuple[str, ...]:
    """The label order: `dataset.classes` when given, else the sorted class names of the training split.

    A class the export declares but the training split never uses is refused: the model would have an output
    it can never learn (Roboflow's dataset-level COCO category is dropped before this, see formats.py)."""
    found = train.found_classes()
    unused = [c for c in train.declared if c not in found]
    if unused:
        raise BadInput(f"{train.place}{train.source}: class {unused[0]!r} has no training photo or box: a class "
                       "needs training examples; add some, or remove the class from the export")
    if given:
        return tuple(given)
    for name in sorted(found):
        if problem := class_name_problem(name):
            raise BadInput(f"{train.place}{train.source}: {problem}: rename the class in the export")
    if len(found) < 2:
        raise BadInput(f"{train.place}{train.source}: the training split has {len(found)} class(es) "
                       f"({', '.join(sorted(found)) or 'none'}): a classifier needs at least two")
    return tuple(sorted(found))


def check_trained(items: list[Labelled], classes, given: bool) -> None:
    """Every class labels at least one training photo; one that never wins a training photo cannot be learned."""
    labelled = {i.label for i in items if i.split == "train"}
    missing = [c for c in classes if c not in labelled]
    if missing:
        where = "listed in dataset.classes" if given else "found in the training split's boxes"
        raise BadInput(f"class {missing[0]!r} ({where}) is the label of no training photo (it never is a training "
                       "photo's dominant class): add training photos of it"
                       + (", or remove it from dataset.classes" if given else ""))


def most_frequent(items: list[Labelled], classes) -> str:
    """The class that labels the most training photos (ties: class order): synthesize leaves it alone."""
    counts = {c: 0 for c in classes}
    for i in items:
        if i.split == "train":
            counts[i.label] += 1
    return max(classes, key=lambda c: (counts[c], -classes.index(c)))


def label_split(ann: Annotations, classes, warn=_warn) -> tuple[list[Labelled], list[tuple]]:
    """Validate one split and label its images; returns (labelled, skipped rows (split, filename, reason))."""
    if ann.folder_labels is not None:
        return _label_folders(ann, classes)
    df = drop_duplicate_rows(ann.df, f"{ann.place}{ann.source}", warn)
    problems = _validate(df, ann, classes)
    if problems:
        raise BadInput(_first_problem(ann, problems, df))
    num = df[NUMERIC].astype(float)
    boxes: dict[str, list[Box]] = {}
    for fn, cls, x0, y0, x1, y1 in zip(df["filename"], df["class"], num["xmin"], num["ymin"], num["xmax"],
                                       num["ymax"]):
        boxes.setdefault(fn, []).append(Box(cls, x0, y0, x1, y1))
    labelled = []
    for fn in sorted(boxes):
        label, score = dominant(boxes[fn], classes)
        labelled.append(Labelled(ann.split, fn, label, score, boxes[fn], path=ann.path(fn)))
    skipped = [(ann.split, fn, f"no bounding boxes in {ann.source}") for fn in ann.images if fn not in boxes]
    return labelled, skipped


def _label_folders(ann: Annotations, classes) -> tuple[list[Labelled], list[tuple]]:
    """One folder per class: the folder is the label, no boxes (the content box is the whole photo)."""
    for name, cls in sorted(ann.folder_labels.items()):
        if cls not in classes:
            raise BadInput(f"{ann.place}{cls}/: unknown class {cls!r}: use one of {', '.join(classes)} (the "
                           "training split's class folders, or dataset.classes) or remove the folder")
    results = _decode_all(ann.folder, [f"{cls}/{name}" for name, cls in sorted(ann.folder_labels.items())])
    for rel, (_, err) in results.items():
        if err is not None:
            raise BadInput(f"image {ann.place}{rel} does not decode ({err}): replace the image with a valid JPEG "
                           "or remove it")
    labelled = [Labelled(ann.split, name, cls, 0.0, [], path=ann.path(name))
                for name, cls in sorted(ann.folder_labels.items())]
    return labelled, [(ann.split, fn, "not in a class folder") for fn in ann.images]


class _Problems:
    """Bad rows of one CSV: the first (what, how to fix) per row index."""

    def __init__(self, df: pd.DataFrame):
        self.df, self.rows = df, {}

    def flag(self, mask: pd.Series, what, fix: str = _FIX_ROW) -> None:
        """Every row where mask holds gets what(row index) -- unless it already has a problem."""
        for i in self.df.index[mask.to_numpy()]:
            self.rows.setdefault(int(i), (what(i), fix))

    def sorted(self) -> list[tuple[int, str, str]]:
        return [(i, *self.rows[i]) for i in sorted(self.rows)]


def _validate(df: pd.DataFrame, ann: Annotations, classes) -> list[tuple[int, str, str]]:
    """Every bad row as (row index, what is wrong, how to fix), sorted by row; the first problem per row only."""
    images = set(ann.images)
    problems = _Problems(df)
    problems.flag(df["filename"] == "", lambda i: "empty filename")
    num = _check_numbers(df, problems)
    _check_boxes(df, num, problems)
    problems.flag(~df["class"].isin(classes), lambda i: f"unknown class {df.at[i, 'class']!r}",
                  f"use one of {', '.join(classes)} (the training split's classes, or dataset.classes) or "
                  "remove the row")
    problems.flag(~df["filename"].isin(images) & (df["filename"] != ""),
                  lambda i: f"image {df.at[i, 'filename']!r} is not in {ann.place}",
                  f"add the image to {ann.place} or remove its rows")
    _check_images(df, num, ann, images, problems)
    return problems.sorted()


def _check_numbers(df: pd.DataFrame, problems: _Problems) -> pd.DataFrame:
    """Width, height and box corners must be finite numbers; returns them as floats (bad ones as 0)."""
    num = {}
    for col in NUMERIC:
        num[col] = pd.to_numeric(df[col], errors="coerce")
        problems.flag(num[col].isna() | ~np.isfinite(num[col].fillna(0)),
                      lambda i, c=col: f"{c} {df.at[i, c]!r} is not a number")
    return pd.DataFrame(num).fillna(0)


def _check_boxes(df: pd.DataFrame, num: pd.DataFrame, problems: _Problems) -> None:
    """A positive image size, and a box that is not inverted and lies inside the image (± TOLERANCE)."""
    problems.flag((num["width"] <= 0) | (num["height"] <= 0),
                  lambda i: f"image size {df.at[i, 'width']}x{df.at[i, 'height']} is not positive")
    problems.flag((num["xmax"] < num["xmin"]) | (num["ymax"] < num["ymin"]),
                  lambda i: f"inverted box (xmin {df.at[i, 'xmin']}, ymin {df.at[i, 'ymin']}, xmax "
                            f"{df.at[i, 'xmax']}, ymax {df.at[i, 'ymax']}): max is below min")
    outside = ((num["xmin"] < -TOLERANCE) | (num["ymin"] < -TOLERANCE)
               | (num["xmax"] > num["width"] + TOLERANCE) | (num["ymax"] > num["height"] + TOLERANCE))
    problems.flag(outside, lambda i: f"box ({df.at[i, 'xmin']},{df.at[i, 'ymin']})-({df.at[i, 'xmax']},"
                                     f"{df.at[i, 'ymax']}) lies outside the {df.at[i, 'width']}x"
                                     f"{df.at[i, 'height']} image (±{TOLERANCE:g} px allowed)")


def _decode_all(split_dir: Path, names: list[str]) -> dict[str, tuple]:
    """name -> ((width, height), None) or (None, why it does not decode); threads: PIL releases the GIL."""
    def check(name):
        try:
            return _open_image(split_dir / name), None
        except ValueError as e:
            return None, str(e)

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(names, pool.map(check, names)))


def _check_images(df: pd.DataFrame, num: pd.DataFrame, ann: Annotations, images: set[str],
                  problems: _Problems) -> None:
    """Each referenced image decodes (once) and has the size its rows claim; rows already bad are skipped."""
    names = list(df[df["filename"].isin(images)].drop_duplicates("filename")["filename"])
    results = _decode_all(ann.folder, names)
    for i, fn in zip(df.index, df["filename"]):
        if fn not in results or int(i) in problems.rows:
            continue
        size, err = results[fn]
        if err is not None:
            problems.rows[int(i)] = (f"image {ann.place}{fn} does not decode ({err})",
                                     "replace the image with a valid JPEG or remove its rows")
        elif (num.at[i, "width"], num.at[i, "height"]) != size:
            problems.rows[int(i)] = (
                f"width x height {df.at[i, 'width']}x{df.at[i, 'height']} differ from the image's real size "
                f"{size[0]}x{size[1]}", "fix width and height in the row (boxes are in the image's pixels)")


def _paint_away(img: np.ndarray, box: Box) -> tuple[slice, slice, np.ndarray]:
    """The box's pixel region and the mean colour of a thin ring of background around it."""
    h, w = img.shape[:2]
    x0, y0 = max(0, math.floor(box.xmin)), max(0, math.floor(box.ymin))
    x1, y1 = min(w, math.ceil(box.xmax)), min(h, math.ceil(box.ymax))
    rx0, ry0, rx1, ry1 = max(0, x0 - RING), max(0, y0 - RING), min(w, x1 + RING), min(h, y1 + RING)
    ring = np.ones((ry1 - ry0, rx1 - rx0), bool)
    ring[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = False
    pixels = img[ry0:ry1, rx0:rx1][ring]
    colour = pixels.mean(axis=0) if len(pixels) else img.reshape(-1, 3).mean(axis=0)
    return slice(y0, y1), slice(x0, x1), np.round(colour).astype(np.uint8)


def synthesize(item: Labelled, classes, common: str, quality: int = 95) -> Labelled | None:
    """The seed's synthetic image: paint the dominant class away so the runner-up class becomes the label.

    Only for photos whose runner-up class is not `common`, the most frequent class of the training split (on
    the aquarium data: fish, as in the seed; the point is more examples of the rare classes). Each dominant box
    is filled with the mean colour of a thin ring of background around it; the boxes of the remaining classes
    are then restored from the original, so an animal partly hidden behind a painted box stays visible.
    Returns None when the photo does not qualify.
    """
    from PIL import Image

    ranks = ranking(item.boxes, classes)
    if len(ranks) < 2 or ranks[1][0] == common:
        return None
    top = ranks[0][0]
    with Image.open(io.BytesIO(item.jpeg)) as im:
        original = np.asarray(im.convert("RGB"))
    img = original.copy()
    paints = [_paint_away(original, b) for b in item.boxes if b.cls == top]
    for ys, xs, colour in paints:
        img[ys, xs] = colour
    kept = [b for b in item.boxes if b.cls != top]
    for b in kept:
        h, w = img.shape[:2]
        ys = slice(max(0, math.floor(b.ymin)), min(h, math.ceil(b.ymax)))
        xs = slice(max(0, math.floor(b.xmin)), min(w, math.ceil(b.xmax)))
        img[ys, xs] = original[ys, xs]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    label, score = dominant(kept, classes)
    return replace(item, filename=SYNTH_PREFIX + item.filename, label=label, score=score, boxes=kept, path=None,
                   jpeg=buf.getvalue())
