"""Bounding boxes to one label per photo: validate `_annotations.csv`, pick the dominant class, synthesize.

The classifiers need one class per photo, but the dataset has one row per bounding box. The seed report's rule
labels a photo with the class that has the largest (sum of its box areas) x (number of its boxes): big animals
win through area, schools of small fish through count. Ties (rare: equal scores) go to the class with more
boxes, then to the class that comes first in `common.config.CLASSES`, so labels never depend on row order.

Every row is validated before anything is labelled, because a silently wrong label is worse than a failed job:
the first problem is reported as one line naming the CSV file and row, with how to fix it.
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

from common.config import CLASSES
from common.errors import BadInput

COLUMNS = ["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]
NUMERIC = ["width", "height", "xmin", "ymin", "xmax", "ymax"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
TOLERANCE = 1.0  # px a box may stick out of the image: the CSVs were converted from YOLO labels (±1 px)
RING = 3  # px: width of the ring around a box whose mean colour paints the box away (synthesize)
SYNTH_PREFIX = "synth-"

_FIX_ROW = "fix or remove the row (one row per box: filename,width,height,class,xmin,ymin,xmax,ymax in pixels)"


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


def ranking(boxes: list[Box], classes=CLASSES) -> list[tuple[str, float, int]]:
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


def dominant(boxes: list[Box], classes=CLASSES) -> tuple[str, float]:
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


def _first_problem(where: str, problems: list[tuple[int, str, str]], df: pd.DataFrame) -> str:
    """The first bad row as one line; the same image's other rows with the very same problem (an undecodable
    photo's other boxes) are not counted as more bad rows."""
    row, what, fix = problems[0]
    others = sum(1 for i, w, _ in problems[1:] if (df.at[i, "filename"], w) != (df.at[row, "filename"], what))
    more = f" ({others} more bad rows in this file)" if others else ""
    return f"{where} row {row + 1} (line {row + 2}): {what}: {fix}{more}"


def read_split(root: Path, split: str, classes=CLASSES, warn=_warn) -> tuple[list[Labelled], list[tuple]]:
    """Validate one split and label its images; returns (labelled, skipped rows (split, filename, reason))."""
    split_dir = root / split
    where = f"{split}/_annotations.csv"
    csv_path = split_dir / "_annotations.csv"
    if not csv_path.is_file():
        raise BadInput(f"{where} is missing: every split folder needs the boxes CSV of Roboflow's "
                       "'TensorFlow Object Detection CSV' export")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise BadInput(f"{where} is empty: it needs the header {','.join(COLUMNS)} and one row per box") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise BadInput(f"{where} is not valid CSV ({str(e).strip()}): fix the file") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise BadInput(f"{where}: missing column(s) {', '.join(missing)} (found {', '.join(df.columns)}): the "
                       f"header must be {','.join(COLUMNS)}")
    df = df[COLUMNS].apply(lambda s: s.str.strip())
    if df.empty:
        raise BadInput(f"{where} has a header but no box rows: every split needs labelled images; re-export "
                       "the dataset")
    df = drop_duplicate_rows(df, where, warn)
    images = split_images(split_dir)
    problems = _validate(df, split_dir, set(images), classes)
    if problems:
        raise BadInput(_first_problem(where, problems, df))
    num = df[NUMERIC].astype(float)
    boxes: dict[str, list[Box]] = {}
    for fn, cls, x0, y0, x1, y1 in zip(df["filename"], df["class"], num["xmin"], num["ymin"], num["xmax"],
                                       num["ymax"]):
        boxes.setdefault(fn, []).append(Box(cls, x0, y0, x1, y1))
    labelled = []
    for fn in sorted(boxes):
        label, score = dominant(boxes[fn], classes)
        labelled.append(Labelled(split, fn, label, score, boxes[fn], path=split_dir / fn))
    skipped = [(split, fn, "no bounding boxes in _annotations.csv") for fn in images if fn not in boxes]
    return labelled, skipped


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


def _validate(df: pd.DataFrame, split_dir: Path, images: set[str], classes) -> list[tuple[int, str, str]]:
    """Every bad row as (row index, what is wrong, how to fix), sorted by row; the first problem per row only."""
    problems = _Problems(df)
    problems.flag(df["filename"] == "", lambda i: "empty filename")
    num = _check_numbers(df, problems)
    _check_boxes(df, num, problems)
    problems.flag(~df["class"].isin(classes), lambda i: f"unknown class {df.at[i, 'class']!r}",
                  f"use one of {', '.join(classes)} or remove the row")
    problems.flag(~df["filename"].isin(images) & (df["filename"] != ""),
                  lambda i: f"image {df.at[i, 'filename']!r} is not in {split_dir.name}/",
                  f"add the image to {split_dir.name}/ or remove its rows")
    _check_images(df, num, split_dir, images, problems)
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


def _check_images(df: pd.DataFrame, num: pd.DataFrame, split_dir: Path, images: set[str],
                  problems: _Problems) -> None:
    """Each referenced image decodes (once) and has the size its rows claim; rows already bad are skipped."""
    names = list(df[df["filename"].isin(images)].drop_duplicates("filename")["filename"])
    results = _decode_all(split_dir, names)
    for i, fn in zip(df.index, df["filename"]):
        if fn not in results or int(i) in problems.rows:
            continue
        size, err = results[fn]
        if err is not None:
            problems.rows[int(i)] = (f"image {split_dir.name}/{fn} does not decode ({err})",
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


def synthesize(item: Labelled, classes=CLASSES, quality: int = 95) -> Labelled | None:
    """The seed's synthetic image: paint the dominant class away so the runner-up class becomes the label.

    Only for photos whose runner-up class is not fish (fish dominate the data; the point is more examples of
    the rare classes). Each dominant box is filled with the mean colour of a thin ring of background around
    it; the boxes of the remaining classes are then restored from the original, so an animal partly hidden
    behind a painted box stays visible. Returns None when the photo does not qualify.
    """
    from PIL import Image

    ranks = ranking(item.boxes, classes)
    if len(ranks) < 2 or ranks[1][0] == "fish":
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
