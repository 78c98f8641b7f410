"""Bring your own dataset: the four export formats, classes from the data or the spec, and their bad input.

One generated set of photos and boxes is written as a TensorFlow Object Detection CSV, a COCO JSON, a YOLO and a
one-folder-per-class export (`exports`, also used on the real zip by test_prepare_real.py); each goes through
the real `aquarium prepare` into a real store, and the labels must come out the same.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import _jpeg, make_rows
from helpers import cli

from common.store import open_store
from jobs.prepare import command

SPLITS = ("train", "valid", "test")


# --- the same photos and boxes in each layout (zip entries: name -> bytes) ---------------------------------

def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def tfcsv(splits: dict, folder=lambda s: s) -> dict[str, bytes]:
    entries = {}
    for split, (images, rows) in splits.items():
        out = io.StringIO()
        csv.writer(out).writerows([["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"], *rows])
        entries[f"{folder(split)}/_annotations.csv"] = out.getvalue().encode()
        entries.update({f"{folder(split)}/{n}": b for n, b in images.items()})
    return entries


def coco(splits: dict, folder=lambda s: s) -> dict[str, bytes]:
    """Roboflow's COCO JSON, with its category for the dataset itself (id 0, the others' supercategory)."""
    classes = sorted({r[3] for _, rows in splits.values() for r in rows})
    categories = [{"id": 0, "name": "things-x1", "supercategory": "none"}]
    categories += [{"id": k + 1, "name": c, "supercategory": "things-x1"} for k, c in enumerate(classes)]
    entries = {}
    for split, (images, rows) in splits.items():
        ids = {n: k for k, n in enumerate(sorted(images))}
        doc = {"info": {}, "categories": categories,
               "images": [{"id": ids[n], "file_name": n, "width": _image_size(b)[0], "height": _image_size(b)[1]}
                          for n, b in sorted(images.items())],
               "annotations": [{"id": k, "image_id": ids[r[0]], "category_id": classes.index(r[3]) + 1,
                                "bbox": [r[4], r[5], r[6] - r[4], r[7] - r[5]], "iscrowd": 0}
                               for k, r in enumerate(rows)]}
        entries[f"{folder(split)}/_annotations.coco.json"] = json.dumps(doc).encode()
        entries.update({f"{folder(split)}/{n}": b for n, b in images.items()})
    return entries


def yolo(splits: dict, folder=lambda s: s) -> dict[str, bytes]:
    """YOLO: data.yaml names in reverse order (the index is not the label order), normalised boxes, and an
    empty label file for a photo without boxes."""
    names = sorted({r[3] for _, rows in splits.values() for r in rows}, reverse=True)
    entries = {"data.yaml": yaml.safe_dump({"nc": len(names), "names": names}).encode()}
    for split, (images, rows) in splits.items():
        lines = {Path(n).stem: [] for n in images}
        for name, w, h, cls, x0, y0, x1, y1 in rows:
            w, h = float(w), float(h)
            lines[Path(name).stem].append(f"{names.index(cls)} {(x0 + x1) / 2 / w!r} {(y0 + y1) / 2 / h!r} "
                                          f"{(x1 - x0) / w!r} {(y1 - y0) / h!r}")
        for stem, text in lines.items():
            entries[f"{folder(split)}/labels/{stem}.txt"] = "\n".join(text).encode()
        entries.update({f"{folder(split)}/images/{n}": b for n, b in images.items()})
    return entries


def folders(splits: dict, labels: dict, folder=lambda s: s) -> dict[str, bytes]:
    """One folder per class, from labels {(split, filename): label}; photos without a label stay out."""
    return {f"{folder(split)}/{labels[(split, n)]}/{n}": b
            for split, (images, _) in splits.items() for n, b in images.items() if (split, n) in labels}


def write(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def generated(seed=3, counts=(14, 7, 7)):
    rng = np.random.default_rng(seed)
    splits = {s: make_rows(s, n, rng) for s, n in zip(SPLITS, counts)}
    splits["train"][0]["empty_000_jpg.rf.0.jpg"] = _jpeg(80, 60, [], rng)  # no boxes: skipped in every format
    return splits


def prepare(zip_path, store, *extra):
    result = cli(command, "--source", zip_path, "--store", store, "--image-sizes", "32", *extra)
    assert result.exit_code == 0, result.output
    return open_store(str(store)), result.output


def labels_of(store) -> list[dict]:
    return list(csv.DictReader(io.StringIO(store.get_text("data/labels.csv"))))


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


# --- every format gives the same labels ----------------------------------------------------------------------

def test_each_format_gives_the_same_labels(tmp_path):
    splits = generated()
    base, _ = prepare(write(tmp_path / "csv.zip", tfcsv(splits)), tmp_path / "csv")
    want = labels_of(base)
    assert len(want) == 28 and {r["label"] for r in want} == set(base.get_json("data/classes.json"))
    by_name = {(r["split"], r["filename"]): r["label"] for r in want}
    val = {"valid": "val"}.get  # COCO and folders use val/, as Keras and Ultralytics name it
    for fmt, entries in (("coco", coco(splits, lambda s: val(s, s))), ("yolo", yolo(splits)),
                         ("folders", folders(splits, by_name, lambda s: val(s, s)))):
        store, out = prepare(write(tmp_path / f"{fmt}.zip", entries), tmp_path / fmt)
        assert f"format {fmt} (detected)" in out
        got = labels_of(store)
        if fmt == "folders":  # no boxes: the label is the folder, by construction the CSV's dominant class
            assert [(r["split"], r["filename"], r["label"], r["sha256"]) for r in got] == \
                [(r["split"], r["filename"], r["label"], r["sha256"]) for r in want]
            assert {r["boxes"] for r in got} == {"0"}
        else:  # the very same labels.csv (scores, box counts, photo hashes), hence the same fingerprint
            assert got == want
            assert store.get_json("data/fingerprint.json")["fingerprint"] == \
                base.get_json("data/fingerprint.json")["fingerprint"]
            assert "train/empty_000_jpg.rf.0.jpg" not in {f"{r['split']}/{r['filename']}" for r in got}
            assert store.get_text("data/skipped.csv").count("empty_000") == 1
        assert store.get_json("data/classes.json") == base.get_json("data/classes.json")
        assert store.get_json("data/counts.json") == base.get_json("data/counts.json")
        assert store.get_json("data/fingerprint.json")["format"] == fmt
    assert "Roboflow's category for the dataset itself" in prepare(
        write(tmp_path / "c2.zip", coco(splits)), tmp_path / "c2")[1]


def test_format_override_reads_the_named_export(tmp_path):
    """A zip holding both a CSV and a COCO file is refused as ambiguous; --format picks one."""
    splits = generated()
    both = write(tmp_path / "both.zip", {**tfcsv(splits), **coco(splits)})
    line = error_line(cli(command, "--source", both, "--store", tmp_path / "s", "--image-sizes", "32"))
    assert "more than one export format (tfcsv, coco)" in line and "--format" in line
    store, out = prepare(both, tmp_path / "s", "--format", "coco")
    assert "format coco;" in out and store.get_json("data/fingerprint.json")["format"] == "coco"


# --- classes from the data or the spec -----------------------------------------------------------------------

THREE = {"hardhat": (240, 200, 0), "vest": (255, 90, 0), "glove": (40, 40, 200)}


def three_class_splits(seed=5, counts=(18, 9, 9)):
    """Photos of three classes that are not aquarium animals: vest dominates most photos; some have a second,
    smaller class (the runner-up) in a corner."""
    rng = np.random.default_rng(seed)
    order = ["vest", "vest", "hardhat", "glove"]
    splits = {}
    for split, n in zip(SPLITS, counts):
        images, rows = {}, []
        for i in range(n):
            w, h = (64, 48) if i % 2 else (48, 64)
            big = order[i % len(order)]
            boxes = [(big, 2, 2, w // 2 + 10, h // 2 + 10)]
            if i % 3 == 0:
                boxes.append(([c for c in THREE if c != big][i % 2], w - 16, h - 16, w - 3, h - 3))
            img = np.clip(rng.integers(30, 80, 3) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
            for cls, x0, y0, x1, y1 in boxes:
                img[y0:y1, x0:x1] = THREE[cls]
            buf = io.BytesIO()
            from PIL import Image

            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            name = f"{split}-{i:03d}.jpg"
            images[name] = buf.getvalue()
            rows += [[name, w, h, c, x0, y0, x1, y1] for c, x0, y0, x1, y1 in boxes]
        splits[split] = (images, rows)
    return splits


def test_classes_come_from_the_training_split_or_the_spec(tmp_path):
    zip_path = write(tmp_path / "ppe.zip", tfcsv(three_class_splits()))
    store, out = prepare(zip_path, tmp_path / "sorted", "--synthesize")
    assert store.get_json("data/classes.json") == ["glove", "hardhat", "vest"]  # sorted names of train
    assert "classes glove, hardhat, vest" in out
    assert list(store.get_json("data/counts.json")["test"]) == ["glove", "hardhat", "vest"]
    # synthesize: the runner-up must not be the most frequent class (vest here, not fish)
    rows = labels_of(store)
    synth = [r for r in rows if r["filename"].startswith("synth-")]
    assert synth and {r["label"] for r in synth} <= {"glove", "hardhat"}
    assert sum(r["label"] == "vest" for r in rows if r["split"] == "train" and r not in synth) > 4

    spec = tmp_path / "ppe.yaml"
    spec.write_text(yaml.safe_dump({"name": "ppe", "dataset": {"source": str(zip_path),
                                                               "classes": ["vest", "hardhat", "glove"]},
                                    "store": str(tmp_path / "listed"), "variants": [{"name": "a"}]}))
    result = cli(command, "--config", spec, "--image-sizes", "32")
    assert result.exit_code == 0, result.output
    listed = open_store(str(tmp_path / "listed"))
    assert listed.get_json("data/classes.json") == ["vest", "hardhat", "glove"]  # the spec's order
    from common.shards import read_split

    t = read_split(listed, "data/tensors/32", "test", tmp_path / "shards")
    want = [r["label"] for r in labels_of(listed) if r["split"] == "test"]
    assert [["vest", "hardhat", "glove"][i] for i in t["labels"]] == want
    assert listed.get_json("data/fingerprint.json")["fingerprint"] != \
        store.get_json("data/fingerprint.json")["fingerprint"]


def _spec(tmp_path, zip_path, **dataset) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "dataset": {"source": str(zip_path), **dataset},
                                    "store": str(tmp_path / "store"), "variants": [{"name": "a"}]}))
    return spec


def _bad(tmp_path, entries, *extra, **dataset) -> str:
    zip_path = write(tmp_path / "bad.zip", entries)
    args = ("--config", _spec(tmp_path, zip_path, **dataset)) if dataset else \
        ("--source", zip_path, "--store", tmp_path / "store")
    line = error_line(cli(command, *args, "--image-sizes", "32", *extra))
    assert not list((tmp_path / "store").rglob("_SUCCESS")) if (tmp_path / "store").exists() else True
    return line


def _without_test(entries):
    return {k: v for k, v in entries.items() if not k.startswith("test/")}


@pytest.mark.parametrize("case", ["listed-class-without-photos", "class-only-in-valid", "missing-test",
                                  "valid-and-val", "unknown-format", "coco-unused-category", "coco-bad-bbox",
                                  "yolo-bad-line", "yolo-bad-index", "folders-same-name", "one-class"])
def test_bad_datasets_fail_with_one_clear_line(case, tmp_path):
    splits = generated()
    if case == "listed-class-without-photos":
        line = _bad(tmp_path, tfcsv(splits), classes=["fish", "jellyfish", "penguin", "puffin", "shark",
                                                      "starfish", "stingray", "octopus"])
        assert "class 'octopus' (listed in dataset.classes) is the label of no training photo" in line
    elif case == "class-only-in-valid":
        entries = coco(splits)
        doc = json.loads(entries["valid/_annotations.coco.json"])
        doc["categories"].append({"id": 99, "name": "octopus", "supercategory": "things-x1"})
        doc["annotations"][0]["category_id"] = 99
        entries["valid/_annotations.coco.json"] = json.dumps(doc).encode()
        line = _bad(tmp_path, entries)
        assert "valid/_annotations.coco.json annotations[0]" in line and "unknown class 'octopus'" in line
    elif case == "missing-test":
        line = _bad(tmp_path, _without_test(yolo(splits)))
        assert "no test/ split folder" in line and "move about a tenth of train/" in line
    elif case == "valid-and-val":
        entries = tfcsv(splits)
        line = _bad(tmp_path, {**entries, **{k.replace("valid/", "val/"): v for k, v in entries.items()
                                             if k.startswith("valid/")}})
        assert "both valid/ and val/" in line
    elif case == "unknown-format":
        entries = {k: v for k, v in tfcsv(splits).items() if not k.endswith(".csv")}
        line = _bad(tmp_path, entries)
        assert "cannot tell its export format" in line and "--format" in line
    elif case == "coco-unused-category":
        entries = coco(splits)
        doc = json.loads(entries["train/_annotations.coco.json"])
        doc["categories"].append({"id": 99, "name": "octopus", "supercategory": "things-x1"})
        entries["train/_annotations.coco.json"] = json.dumps(doc).encode()
        line = _bad(tmp_path, entries)
        assert "train/_annotations.coco.json: class 'octopus' has no training photo or box" in line
    elif case == "coco-bad-bbox":
        entries = coco(splits)
        doc = json.loads(entries["test/_annotations.coco.json"])
        doc["annotations"][2]["bbox"] = [1, 2, 3]
        entries["test/_annotations.coco.json"] = json.dumps(doc).encode()
        assert "test/_annotations.coco.json annotations[2]: bbox [1, 2, 3] is not [x, y, width, height]" in \
            _bad(tmp_path, entries)
    elif case == "yolo-bad-line":
        entries = yolo(splits)
        key = next(k for k in sorted(entries) if k.startswith("valid/labels/") and entries[k])
        entries[key] += b"\n0 0.5 0.5 0.2"
        n = entries[key].decode().count("\n") + 1
        assert f"{key} line {n}: 4 values, expected 5" in _bad(tmp_path, entries)
    elif case == "yolo-bad-index":
        entries = yolo(splits)
        key = next(k for k in sorted(entries) if k.startswith("train/labels/") and entries[k])
        entries[key] = b"7 0.5 0.5 0.2 0.2"
        assert f"{key} line 1: class '7' is not an index of data.yaml's names (0..6)" in _bad(tmp_path, entries)
    elif case == "folders-same-name":
        by_name = {("train", n): ["cat", "dog"][k % 2] for k, n in enumerate(sorted(splits["train"][0]))}
        by_name |= {(s, n): "cat" for s in ("valid", "test") for n in splits[s][0]}
        entries = folders(splits, by_name)
        entries["train/dog/" + next(n for (s, n), c in by_name.items() if s == "train" and c == "cat")] = b"x"
        assert "share a file name" in _bad(tmp_path, entries)
    elif case == "one-class":
        by_name = {(s, n): "cat" for s in SPLITS for n in splits[s][0]}
        assert "the training split has 1 class(es) (cat): a classifier needs at least two" in \
            _bad(tmp_path, folders(splits, by_name))


# --- a dataset of three other classes through the whole smoke sweep ---------------------------------------------

def test_three_class_dataset_runs_the_smoke_sweep_end_to_end(tmp_path):
    """smoke.yaml without its aquarium classes on a COCO export of hard hats, vests and gloves: prepare, every
    variant, the ensemble row, the report and `predict` all speak of those three classes."""
    from helpers import ROOT, aquarium

    splits = three_class_splits(counts=(24, 12, 12))
    zip_path = write(tmp_path / "ppe.zip", coco(splits))
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    del raw["dataset"]["classes"]
    raw.update(name="ppe", ensemble_top_k=2)
    config = tmp_path / "ppe.yaml"
    config.write_text(yaml.safe_dump(raw))
    store_uri = f"file://{tmp_path / 'store'}"
    run = aquarium("sweep", "run", "--config", config, "--executor", "local", "--source", zip_path,
                   "--store", store_uri, cwd=tmp_path, timeout=840)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    classes = ["glove", "hardhat", "vest"]
    store = open_store(store_uri)
    assert store.get_json("data/classes.json") == classes
    for name in ("cnn-a", "cnn-b", "mnv3"):
        metrics = store.get_json(f"sweeps/ppe/variants/{name}/metrics.json")
        assert metrics["classes"] == classes and np.array(metrics["test"]["confusion"]).shape == (3, 3)
        header = store.get_text(f"sweeps/ppe/variants/{name}/predictions.csv").splitlines()[0]
        assert header.endswith("p_glove,p_hardhat,p_vest")
    board = store.get_text("sweeps/ppe/report/leaderboard.csv")
    assert "ensemble-top2" in board
    card = store.get_json("sweeps/ppe/best/model_card.json")
    assert card["classes"] == classes
    report_md = store.get_text("sweeps/ppe/report/report.md")
    for c in classes:
        assert f"| {c} |" in report_md  # the per-class table of the best model
    assert '<table id="per-class">' in store.get_text("sweeps/ppe/report/report.html")
    assert not any(a in report_md for a in ("fish", "penguin", "stingray"))

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(splits["test"][0]["test-000.jpg"])
    pred = aquarium("predict", "--model", "best", "--config", config, "--store", store_uri, photo, cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr
    head, row = pred.stdout.strip().splitlines()
    assert head == "file,predicted,p_glove,p_hardhat,p_vest"
    assert row.split(",")[1] in classes


# --- the real zip, converted here to COCO, YOLO and class folders -----------------------------------------------

def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() else value


def read_tfcsv_zip(path: Path) -> dict:
    """The real CSV export as {split: ({filename: bytes}, rows)}, the structure the converters above take."""
    splits = {}
    with zipfile.ZipFile(path) as zf:
        for split in SPLITS:
            rows = [[r["filename"], *(_number(r[k]) for k in ("width", "height")), r["class"],
                     *(_number(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))]
                    for r in csv.DictReader(io.TextIOWrapper(zf.open(f"{split}/_annotations.csv"), newline=""))]
            images = {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist()
                      if n.startswith(f"{split}/") and n.lower().endswith(".jpg")}
            splits[split] = (images, rows)
    return splits


@pytest.mark.realdata
def test_real_zip_in_every_format_gives_the_csv_labels(real_zip, tmp_path):
    base, _ = prepare(real_zip, tmp_path / "csv")
    want = labels_of(base)
    assert len(want) == 637
    splits = read_tfcsv_zip(real_zip)
    by_name = {(r["split"], r["filename"]): r["label"] for r in want}
    for fmt, entries in (("coco", coco(splits)), ("yolo", yolo(splits)), ("folders", folders(splits, by_name))):
        store, out = prepare(write(tmp_path / f"{fmt}.zip", entries), tmp_path / fmt)
        assert f"format {fmt} (detected)" in out
        got = labels_of(store)
        keep = ["split", "filename", "label", "sha256"] if fmt == "folders" else list(want[0])
        assert [{k: r[k] for k in keep} for r in got] == [{k: r[k] for k in keep} for r in want], fmt
        assert store.get_json("data/counts.json") == base.get_json("data/counts.json")


@pytest.mark.realdata
@pytest.mark.parametrize("fmt", ["coco", "yolo", "folders"])
def test_real_zip_converted_runs_the_smoke_sweep(fmt, real_zip, tmp_path):
    """`make smoke` (its command: smoke.yaml, local executor) on the real photos converted at run time to COCO
    JSON, YOLO or class folders (issue 20's done-when): prepare reads the export by content, every variant
    trains, the report and model card name the seven classes. The labels themselves are the test above's."""
    from helpers import ROOT, aquarium

    from common.config import CLASSES
    from common.data import labels

    splits = read_tfcsv_zip(real_zip)
    by_name = {(s, r[0]): None for s, (_, rows) in splits.items() for r in rows}
    for split, name in by_name:  # folders: each photo under its dominant class (the CSV's label by construction)
        boxes = [labels.Box(r[3], *r[4:]) for r in splits[split][1] if r[0] == name]
        by_name[split, name] = labels.dominant(boxes, CLASSES)[0]
    entries = {"coco": coco, "yolo": yolo}[fmt](splits) if fmt != "folders" else folders(splits, by_name)
    zip_path = write(tmp_path / f"aquarium-{fmt}.zip", entries)
    store_uri = f"file://{tmp_path / 'store'}"
    run = aquarium("sweep", "run", "--config", ROOT / "smoke.yaml", "--executor", "local", "--source", zip_path,
                   "--store", store_uri, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    store = open_store(store_uri)
    assert store.get_json("data/fingerprint.json")["format"] == fmt  # read by content: no --format given
    assert sum(store.get_json("data/fingerprint.json")["images"].values()) == 637
    board = list(csv.DictReader(io.StringIO(store.get_text("sweeps/smoke/report/leaderboard.csv"))))
    assert {"cnn-a", "cnn-b", "mnv3"} <= {r["variant"] for r in board}
    assert store.get_json("sweeps/smoke/best/model_card.json")["classes"] == list(CLASSES)
    assert all(f"| {c} |" in store.get_text("sweeps/smoke/report/report.md") for c in CLASSES)


@pytest.mark.parametrize("classes,message", [
    (["cat"], "at least two classes"), (["cat", "dog", "cat"], "class 'cat' is listed twice"),
    (["cat", "a/b"], "cannot be a folder name"), (["cat", " dog"], "surrounding spaces")])
def test_spec_classes_are_validated(classes, message, tmp_path):
    from common.config import parse_sweep
    from common.errors import BadInput

    with pytest.raises(BadInput, match=message):
        parse_sweep({"name": "x", "dataset": {"source": "a.zip", "classes": classes}, "variants": [{"name": "a"}]})


def test_aquarium_specs_list_the_seed_classes_in_its_order():
    """The aquarium labels (and so every finished result) stay as they were: the seed's order, which is also
    the sorted order the data would give."""
    from helpers import ROOT

    from common.config import CLASSES, load_sweep

    for spec in ("sweep.yaml", "smoke.yaml"):
        assert tuple(load_sweep(ROOT / spec).dataset.classes) == CLASSES == tuple(sorted(CLASSES))
