"""`prepare` on the real Roboflow Aquarium zip (AQUARIUM_ZIP): counts, skipped image and every label.

The expected labels are computed here again from the raw CSVs with plain csv + dict code, independently of
common/data/labels.py.
"""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
from helpers import cli

from common.store import open_store
from jobs.prepare import command

pytestmark = pytest.mark.realdata

CLASSES = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]
SPLITS = ["train", "valid", "test"]


def expected_from_csv(zip_path):
    """{(split, filename): (label, ranked classes)} by sum(area) x count; ties: more boxes, then CLASSES order."""
    out = {}
    with zipfile.ZipFile(zip_path) as zf:
        for split in SPLITS:
            areas = {}
            for row in csv.DictReader(io.TextIOWrapper(zf.open(f"{split}/_annotations.csv"), newline="")):
                w = float(row["xmax"]) - float(row["xmin"])
                h = float(row["ymax"]) - float(row["ymin"])
                areas.setdefault(row["filename"], {}).setdefault(row["class"], []).append(w * h)
            for name, per_class in areas.items():
                ranked = sorted(per_class, key=lambda c: (-sum(per_class[c]) * len(per_class[c]),
                                                          -len(per_class[c]), CLASSES.index(c)))
                out[(split, name)] = ranked
    return out


def test_real_dataset(real_zip, tmp_path):
    result = cli(command, "--source", real_zip, "--store", tmp_path / "store", "--image-sizes", "64", "--synthesize",
                 "--sha256", "81e0dc02681081e6832db4d36f6be925f0b1adf7641bc32fe1526388d423cf3e")
    assert result.exit_code == 0, result.output
    store = open_store(str(tmp_path / "store"))
    rows = list(csv.DictReader(io.StringIO(store.get_text("data/labels.csv"))))
    real = [r for r in rows if not r["filename"].startswith("synth-")]
    synth = [r for r in rows if r["filename"].startswith("synth-")]
    assert {s: sum(r["split"] == s for r in real) for s in SPLITS} == {"train": 447, "valid": 127, "test": 63}

    expected = expected_from_csv(real_zip)
    assert {(r["split"], r["filename"]): r["label"] for r in real} == {k: v[0] for k, v in expected.items()}

    skipped = list(csv.DictReader(io.StringIO(store.get_text("data/skipped.csv"))))
    assert len(skipped) == 1 and skipped[0]["split"] == "train"
    with zipfile.ZipFile(real_zip) as zf:
        train_images = {n.split("/", 1)[1] for n in zf.namelist() if n.startswith("train/") and n.endswith(".jpg")}
    assert len(train_images) == 448
    assert train_images - {n for (s, n) in expected if s == "train"} == {skipped[0]["filename"]}

    # Synthetic images: train photos with two or more classes whose runner-up is not fish.
    want_synth = {"synth-" + n: ranked[1] for (s, n), ranked in expected.items()
                  if s == "train" and len(ranked) >= 2 and ranked[1] != "fish"}
    assert {r["filename"]: r["label"] for r in synth} == want_synth
    assert all(r["split"] == "train" for r in synth)

    counts = store.get_json("data/counts.json")
    for split in SPLITS:
        per_class = {c: 0 for c in CLASSES}
        for (s, _), ranked in expected.items():
            if s == split:
                per_class[ranked[0]] += 1
        if split == "train":
            for label in want_synth.values():
                per_class[label] += 1
        assert counts[split] == per_class
    assert counts["valid"]["fish"] > counts["valid"]["starfish"]  # fish photos dominate, as in the seed

    from common.shards import read_split

    test = read_split(store, "data/tensors/64", "test", tmp_path / "shards")
    assert test["images"].shape == (63, 64, 64, 3)
    assert test["images"].std() > 10  # real photos, not padding
    assert np.array_equal(test["labels"], [CLASSES.index(r["label"]) for r in real if r["split"] == "test"])
    assert f"synthesized: {len(want_synth)}" in result.output
