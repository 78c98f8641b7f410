"""The export formats `prepare` reads, each turned into the same box rows (`labels.Annotations`).

Roboflow (and most tools) export one dataset in several layouts; the labelling rule does not care which:

    tfcsv    <split>/_annotations.csv    filename,width,height,class,xmin,ymin,xmax,ymax (pixels), one row per box
    coco     <split>/_annotations.coco.json   images, annotations (bbox [x, y, w, h] in pixels), categories
    yolo     data.yaml (names), <split>/images/*.jpg, <split>/labels/<image stem>.txt: class cx cy w h (0..1)
    folders  <split>/<class>/*.jpg: the folder is the label, no boxes

The format is detected by content (`detect`), or named by `dataset.format` / `--format`. Each reader only turns
its layout into rows and names each row's place; labels.py validates every row the same way for all of them.
A structural problem of one format (a label line that is not five numbers, a bbox that is not four) is refused
here at once, naming the file and line or the JSON path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from common.config import class_name_problem
from common.data import SPLITS
from common.data.labels import COLUMNS, Annotations, _open_image, split_images
from common.errors import BadInput

FOLDER_NAMES = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}  # accepted on disk
CSV, COCO, YOLO_YAML = "_annotations.csv", "_annotations.coco.json", "data.yaml"
_LAYOUTS = "see README, Bring your own dataset"


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def dataset_root(folder: Path, source: str) -> Path:
    """The folder holding the split folders: the zip's root, or its single top-level folder."""
    if (folder / "train").is_dir():
        return folder
    children = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("__MACOSX", "."))]
    if len(children) == 1 and (children[0] / "train").is_dir():
        return children[0]
    raise BadInput(f"dataset {source} has no train/ split folder: the zip must hold train/, valid/ (or val/) and "
                   f"test/ split folders ({_LAYOUTS})")


def split_folders(root: Path, source: str) -> dict[str, Path]:
    """split -> its folder: train/, valid/ or val/, test/. A missing split is refused, saying how to make one."""
    folders = {}
    for split, names in FOLDER_NAMES.items():
        found = [root / n for n in names if (root / n).is_dir()]
        if len(found) > 1:
            raise BadInput(f"dataset {source} has both valid/ and val/: keep one validation split folder")
        if not found:
            raise BadInput(f"dataset {source} has no {'/ (or '.join(names)}/{')' if len(names) > 1 else ''} split "
                           f"folder: the model is chosen on valid and scored on test, photos it never trained on; "
                           f"move about a tenth of train/'s photos (with their annotations) into {names[0]}/, or "
                           "re-export from Roboflow with train/valid/test splits")
        folders[split] = found[0]
    return folders


def detect(root: Path, folders: dict[str, Path], source: str) -> str:
    """The export format, from what the folders hold; more than one candidate or none is refused."""
    found = []
    if any((f / CSV).is_file() for f in folders.values()):
        found.append("tfcsv")
    if any((f / COCO).is_file() for f in folders.values()):
        found.append("coco")
    if (root / YOLO_YAML).is_file() or any((f / "labels").is_dir() for f in folders.values()):
        found.append("yolo")
    if not found and any(p.is_dir() and not p.name.startswith(".") for p in folders["train"].iterdir()):
        found.append("folders")
    if len(found) == 1:
        return found[0]
    if found:
        raise BadInput(f"dataset {source} looks like more than one export format ({', '.join(found)}): pass "
                       "--format (or set dataset.format) to say which to read")
    raise BadInput(f"dataset {source}: cannot tell its export format: no {CSV} or {COCO} in the split folders, no "
                   f"{YOLO_YAML} and no class folders in train/: export it from Roboflow as 'TensorFlow Object "
                   f"Detection CSV', 'COCO JSON', 'YOLO' or a folder per class ({_LAYOUTS}), or pass --format")


def read(fmt: str, root: Path, folders: dict[str, Path], warn=_warn) -> dict[str, Annotations]:
    """Every split of the export as Annotations, in SPLITS order."""
    if fmt == "yolo":
        names = yolo_names(root)
        return {s: read_yolo(s, folders[s], names) for s in SPLITS}
    reader = {"tfcsv": read_tfcsv, "coco": lambda s, f: read_coco(s, f, warn), "folders": read_folders}[fmt]
    return {s: reader(s, folders[s]) for s in SPLITS}


def _place(folder: Path) -> str:
    return f"{folder.name}/"


def annotation_file(folder: Path, name: str, what: str) -> tuple[str, Path]:
    """(where, path) of a split's annotation file, which must exist: `what` names the export it belongs to."""
    where, path = f"{folder.name}/{name}", folder / name
    if not path.is_file():
        raise BadInput(f"{where} is missing: every split folder needs {what} export")
    return where, path


def read_tfcsv(split: str, folder: Path) -> Annotations:
    """Roboflow's 'TensorFlow Object Detection CSV': one row per box, corners in pixels."""
    where, path = annotation_file(folder, CSV, "the boxes CSV of Roboflow's 'TensorFlow Object Detection CSV'")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise BadInput(f"{where} is empty: it needs the header {','.join(COLUMNS)} and one row per box") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise BadInput(f"{where} is not valid CSV ({str(e).strip()}): fix the file") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise BadInput(f"{where}: missing column(s) {', '.join(missing)} (found {', '.join(df.columns)}): the "
                       f"header must be {','.join(COLUMNS)}")
    df = df[COLUMNS].apply(lambda s: s.str.strip()).reset_index(drop=True)
    if df.empty:
        raise BadInput(f"{where} has a header but no box rows: every split needs labelled images; re-export "
                       "the dataset")
    return Annotations(split, folder, _place(folder), CSV, split_images(folder), df,
                       [f"{where} row {k + 1} (line {k + 2})" for k in range(len(df))])


def _rows(rows: list[list]) -> pd.DataFrame:
    return pd.DataFrame([[str(v).strip() for v in r] for r in rows], columns=COLUMNS, dtype=str)


def _number(value, where: str, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{where}: {what} {value!r} is not a number: fix the entry") from None
    return out


def _coco_list(doc, key: str, where: str) -> list:
    items = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise BadInput(f"{where}: '{key}' is missing or not a list of objects: a COCO file needs images, "
                       "annotations and categories")
    return items


def read_coco(split: str, folder: Path, warn=_warn) -> Annotations:
    """Roboflow's 'COCO JSON': bbox [x, y, width, height] in pixels, image sizes in `images`.

    Roboflow adds one category for the dataset itself (the other categories' supercategory) that no box uses:
    it is not a class, so it is dropped with a note. Any other category without training boxes is refused
    (`labels.resolve_classes`)."""
    where, path = annotation_file(folder, COCO, "the annotations of Roboflow's 'COCO JSON'")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{where} is not valid JSON ({e}): fix the file") from None
    categories, images = {}, {}
    for k, c in enumerate(_coco_list(doc, "categories", where)):
        if "id" not in c or not isinstance(c.get("name"), str):
            raise BadInput(f"{where} categories[{k}]: needs an id and a name: fix the entry")
        categories[c["id"]] = c
    for k, im in enumerate(_coco_list(doc, "images", where)):
        if "id" not in im or not isinstance(im.get("file_name"), str):
            raise BadInput(f"{where} images[{k}]: needs an id and a file_name: fix the entry")
        images[im["id"]] = im
    rows, at, used = [], [], set()
    for k, a in enumerate(_coco_list(doc, "annotations", where)):
        loc = f"{where} annotations[{k}]"
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise BadInput(f"{loc}: bbox {bbox!r} is not [x, y, width, height]: fix the entry")
        if a.get("image_id") not in images:
            raise BadInput(f"{loc}: image_id {a.get('image_id')!r} is not in images: fix the entry")
        if a.get("category_id") not in categories:
            raise BadInput(f"{loc}: category_id {a.get('category_id')!r} is not in categories: fix the entry")
        x, y, w, h = (_number(v, loc, "bbox value") for v in bbox)
        im = images[a["image_id"]]
        used.add(a["category_id"])
        rows.append([im["file_name"], im.get("width"), im.get("height"), categories[a["category_id"]]["name"],
                     x, y, x + w, y + h])
        at.append(f"{loc} (image {im['file_name']!r})")
    parents = {c.get("supercategory") for c in categories.values()}
    declared = []
    for cid, c in categories.items():
        if cid not in used and c["name"] in parents:
            warn(f"note: {where}: category {c['name']!r} (id {cid}) has no boxes and is the other categories' "
                 "supercategory: Roboflow's category for the dataset itself, not a class; ignored")
        else:
            declared.append(c["name"])
    return Annotations(split, folder, _place(folder), COCO, split_images(folder), _rows(rows), at,
                       declared=tuple(declared))


def yolo_names(root: Path) -> list[str]:
    """data.yaml's `names`, a list or {index: name}, in class index order."""
    path = root / YOLO_YAML
    if not path.is_file():
        raise BadInput(f"{YOLO_YAML} is missing: a YOLO export names its classes there (names: [...]) beside "
                       "the split folders")
    try:
        names = (yaml.safe_load(path.read_text()) or {}).get("names")
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
        raise BadInput(f"{YOLO_YAML} is not a YAML mapping ({e}): fix the file") from None
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BadInput(f"{YOLO_YAML}: names must list the class names in index order (names: [cat, dog] or "
                       "{0: cat, 1: dog})")
    return names


def read_yolo(split: str, folder: Path, names: list[str]) -> Annotations:
    """YOLO: one label file per image, `class cx cy w h` normalised to 0..1; an empty file means no boxes."""
    images_dir, labels_dir = folder / "images", folder / "labels"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise BadInput(f"{folder.name}/{d.name}/ is missing: a YOLO split holds images/ and labels/ "
                           f"({_LAYOUTS})")
    images = split_images(images_dir)
    stems = {Path(n).stem: n for n in images}
    rows, at = [], []
    for txt in sorted(labels_dir.glob("*.txt")):
        where = f"{folder.name}/labels/{txt.name}"
        if txt.stem not in stems:
            raise BadInput(f"{where} has no image {txt.stem}.jpg in {folder.name}/images/: add the image or remove "
                           "the label file")
        name = stems[txt.stem]
        lines = [(j, line.split()) for j, line in enumerate(txt.read_text().splitlines(), 1) if line.strip()]
        if not lines:
            continue
        try:
            width, height = _open_image(images_dir / name)
        except ValueError as e:
            raise BadInput(f"image {folder.name}/images/{name} does not decode ({e}): replace the image with a "
                           "valid JPEG or remove it and its label file") from None
        for j, parts in lines:
            loc = f"{where} line {j}"
            if len(parts) != 5:
                raise BadInput(f"{loc}: {len(parts)} values, expected 5 (class cx cy w h; polygons are not boxes): "
                               "fix the line")
            if not parts[0].isdigit() or int(parts[0]) >= len(names):
                raise BadInput(f"{loc}: class {parts[0]!r} is not an index of {YOLO_YAML}'s names "
                               f"(0..{len(names) - 1}): fix the line")
            cx, cy, w, h = (_number(v, loc, "value") for v in parts[1:])
            # back to pixels; rounded so that pixel boxes written as fractions come back exactly
            box = [round(v, 6) for v in ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                                         (cy + h / 2) * height)]
            rows.append([name, width, height, names[int(parts[0])], *box])
            at.append(loc)
    return Annotations(split, images_dir, f"{folder.name}/images/", "labels/", images, _rows(rows), at,
                       scope="this split's label files", declared=tuple(names) if split == "train" else ())


def read_folders(split: str, folder: Path) -> Annotations:
    """One folder per class (Roboflow's and Keras' classification layout): the folder is the label."""
    labels: dict[str, str] = {}
    classes = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))):
        if problem := class_name_problem(d.name):
            raise BadInput(f"{folder.name}/{d.name}/: {problem}: rename the folder")
        classes.append(d.name)
        for name in split_images(d):
            if name in labels:
                raise BadInput(f"{folder.name}/{d.name}/{name} and {folder.name}/{labels[name]}/{name} share a file "
                               "name: rename one (a photo is known by its name within a split)")
            labels[name] = d.name
    if not labels:
        raise BadInput(f"{folder.name}/ has no class folders with images: the one-folder-per-class layout is "
                       f"{folder.name}/<class>/*.jpg ({_LAYOUTS})")
    return Annotations(split, folder, _place(folder), "", split_images(folder), folder_labels=labels,
                       declared=tuple(classes) if split == "train" else ())
