"""`aquarium prepare` end to end on generated zips: bad input, labels, store layout, reruns, sources, synthesize.

Every run goes through the real click command (in process with CliRunner, once as a subprocess) into a real
store (a folder, or the moto S3 server). Only size 64 (or 32) is materialised to keep the file fast.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, COLOURS, HEADER, make_dataset, make_rows, write_zip
from helpers import aquarium, cli

from common.data import labels as lab
from common.data import source as src
from common.errors import BadInput
from common.store import open_store
from jobs.prepare import command

def run(*args):
    return cli(command, *args)


def prepare_ok(source, store, *extra):
    result = run("--source", source, "--store", store, "--image-sizes", "64", *extra)
    assert result.exit_code == 0, result.output
    return result


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def read_labels(store) -> list[dict]:
    return list(csv.DictReader(io.StringIO(store.get_text("data/labels.csv"))))


def small_splits(seed=1, n=7):
    rng = np.random.default_rng(seed)
    return {split: make_rows(split, n, rng) for split in ("train", "valid", "test")}


def first_row_of(rows, name) -> int:
    return next(k for k, r in enumerate(rows) if r[0] == name)


# --- bad input: exit code 2, one line naming the file and row, nothing complete in the store ----------------

def _mutate(case, splits):
    """Break the valid split; return (extra zip entries, expected text in the error line)."""
    images, rows = splits["valid"]
    name1 = sorted(images)[1]  # image 1 has exactly one box
    k = first_row_of(rows, name1)
    where = f"valid/_annotations.csv row {k + 1} (line {k + 2})"
    if case == "non-numeric":
        rows[k][4] = "12px"
        return {}, [where, "xmin '12px' is not a number"]
    if case == "inverted":
        rows[k][4], rows[k][6] = rows[k][6], rows[k][4]
        return {}, [where, "inverted box"]
    if case == "outside":
        rows[k][6] = rows[k][1] + 3  # xmax 3 px past the right edge (1 px is tolerated)
        return {}, [where, "outside", "±1 px"]
    if case == "unknown-class":
        rows[k][3] = "octopus"
        return {}, [where, "unknown class 'octopus'", "fish, jellyfish"]
    if case == "missing-image":
        del images[name1]
        return {}, [where, f"image {name1!r} is not in valid/"]
    if case == "truncated-image":
        images[name1] = images[name1][: len(images[name1]) // 2]
        return {}, [where, "does not decode"]
    if case == "not-a-jpeg":
        images[name1] = b"this is not an image at all"
        return {}, [where, "does not decode"]
    if case == "wrong-size":
        rows[k][1] += 10
        return {}, [where, "differ from the image's real size"]
    if case == "missing-columns":
        del splits["valid"]
        text = "filename,width,height,class,xmin,ymin\n" + "".join(f"{r[0]},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}\n"
                                                                   for r in rows)
        return {"valid/_annotations.csv": text.encode(), **{f"valid/{n}": b for n, b in images.items()}}, \
            ["valid/_annotations.csv", "missing column(s) xmax, ymax"]
    if case == "missing-csv":
        del splits["valid"]
        return {f"valid/{n}": b for n, b in images.items()}, ["valid/_annotations.csv is missing"]
    if case == "no-rows":
        rows.clear()
        return {}, ["valid/_annotations.csv has a header but no box rows"]
    if case == "missing-split":
        del splits["test"]
        return {}, ["no test/ split folder"]
    raise AssertionError(case)


BAD_CASES = ["non-numeric", "inverted", "outside", "unknown-class", "missing-image", "truncated-image",
             "not-a-jpeg", "wrong-size", "missing-columns", "missing-csv", "no-rows", "missing-split"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_annotations_fail_with_one_clear_line(case, tmp_path):
    splits = small_splits()
    extra, expected = _mutate(case, splits)
    zip_path = write_zip(tmp_path / "bad.zip", splits, extra)
    store = tmp_path / "store"
    result = run("--source", zip_path, "--store", store, "--image-sizes", "64")
    assert result.exit_code == 2, result.output
    line = error_line(result)
    for text in expected:
        assert text in line, line
    assert ":" in line.split(expected[0], 1)[1]  # followed by what is wrong and how to fix it
    assert open_store(str(store)).is_complete("data") is None
    assert not list(store.rglob("_SUCCESS"))


def test_more_bad_rows_are_counted_in_the_same_line(tmp_path):
    splits = small_splits()
    rows = splits["valid"][1]  # a class of no training photo: the classes come from the training split
    rows[2][3] = "whale"
    rows[5][3] = "whale"
    result = run("--source", write_zip(tmp_path / "bad.zip", splits), "--store", tmp_path / "s")
    assert result.exit_code == 2
    line = error_line(result)
    assert "valid/_annotations.csv row 3 (line 4): unknown class 'whale'" in line and "1 more bad rows" in line


def test_one_pixel_tolerance_is_accepted(tmp_path):
    splits = small_splits()
    images, rows = splits["valid"]
    rows[0][6] = rows[0][1] + 1  # xmax one px past the edge, like the real dataset's YOLO conversion
    rows[0][5] = -1
    prepare_ok(write_zip(tmp_path / "ok.zip", splits), tmp_path / "store")
    assert open_store(str(tmp_path / "store")).is_complete("data")


@pytest.mark.parametrize("entry,why", [("../evil.txt", "'..' path component"),
                                       ("/abs/evil.txt", "absolute path"),
                                       ("train/../../evil.txt", "'..' path component")])
def test_zip_slip_is_refused(entry, why, tmp_path):
    zip_path = write_zip(tmp_path / "slip.zip", small_splits(), {entry: b"pwned"})
    result = run("--source", zip_path, "--store", tmp_path / "store")
    assert result.exit_code == 2
    assert why in error_line(result) and repr(entry) in error_line(result)
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()
    assert not (tmp_path / "store").exists()


def test_symlink_entry_is_refused(tmp_path):
    zip_path = write_zip(tmp_path / "link.zip", small_splits())
    with zipfile.ZipFile(zip_path, "a") as zf:
        info = zipfile.ZipInfo("train/link.jpg")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    result = run("--source", zip_path, "--store", tmp_path / "store")
    assert result.exit_code == 2
    assert "symbolic link" in error_line(result)


def test_unpacked_size_cap(tmp_path):
    zip_path = write_zip(tmp_path / "bomb.zip", small_splits())
    with zipfile.ZipFile(zip_path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pad.bin", b"\0" * (3 << 20))
    assert zip_path.stat().st_size < (1 << 20)  # compresses to almost nothing
    result = run("--source", zip_path, "--store", tmp_path / "store", "--max-unpacked-mb", "1")
    assert result.exit_code == 2
    assert "over the limit of 1048576" in error_line(result)


def test_entry_count_cap_and_lying_headers(tmp_path):
    zip_path = write_zip(tmp_path / "many.zip", small_splits(n=3))
    with pytest.raises(BadInput, match="zip entries, over the limit of 5"):
        src.safe_extract(zip_path, tmp_path / "x", "many.zip", max_entries=5)
    # A zip whose central directory understates a file's size: the streamed byte count catches it.
    bomb = tmp_path / "liar.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", b"\0" * 50_000)
    data = bytearray(bomb.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (10).to_bytes(4, "little")  # uncompressed size in the central directory: 10 bytes
    bomb.write_bytes(bytes(data))
    with pytest.raises(BadInput):
        src.safe_extract(bomb, tmp_path / "y", "liar.zip", max_bytes=1000)


def test_not_a_zip_fails_cleanly_as_a_process(tmp_path):
    fake = tmp_path / "dataset.zip"
    fake.write_text("<html>not a zip: a Drive confirmation page</html>")
    proc = aquarium("prepare", "--source", fake, "--store", tmp_path / "store", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "is not a zip file" in proc.stderr and "TensorFlow Object Detection CSV" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "store").exists()


def test_missing_source_and_missing_options(tmp_path):
    result = run("--store", tmp_path / "s")
    assert result.exit_code == 2 and "needs --source and --store" in error_line(result)
    result = run("--source", tmp_path / "nope.zip", "--store", tmp_path / "s")
    assert result.exit_code == 2 and "not found" in error_line(result)


def test_sha256_mismatch(dataset_zip, tmp_path):
    result = run("--source", dataset_zip, "--store", tmp_path / "s", "--sha256", "0" * 64)
    assert result.exit_code == 2
    line = error_line(result)
    actual = hashlib.sha256(dataset_zip.read_bytes()).hexdigest()
    assert f"has sha256 {actual}, expected {'0' * 64}" in line
    assert not (tmp_path / "s").exists()


# --- labels --------------------------------------------------------------------------------------------------

def independent_labels(zip_path: Path) -> dict[tuple[str, str], str]:
    """The area x count rule written again from scratch: plain csv, dicts, ties by count then CLASSES order."""
    out = {}
    with zipfile.ZipFile(zip_path) as zf:
        for split in ("train", "valid", "test"):
            per_image: dict[str, dict[str, list[float]]] = {}
            for r in csv.DictReader(io.TextIOWrapper(zf.open(f"{split}/_annotations.csv"))):
                area = (float(r["xmax"]) - float(r["xmin"])) * (float(r["ymax"]) - float(r["ymin"]))
                per_image.setdefault(r["filename"], {}).setdefault(r["class"], []).append(area)
            for name, classes in per_image.items():
                best = max(classes, key=lambda c: (sum(classes[c]) * len(classes[c]), len(classes[c]),
                                                   -CLASSES.index(c)))
                out[(split, name)] = best
    return out


def test_labels_layout_and_counts(dataset_zip, tmp_path):
    result = prepare_ok(dataset_zip, tmp_path / "store")
    store = open_store(str(tmp_path / "store"))
    rows = read_labels(store)
    assert [list(r) for r in rows[:1]] == [["split", "filename", "label", "score", "boxes", "sha256"]]
    got = {(r["split"], r["filename"]): r["label"] for r in rows}
    assert got == independent_labels(dataset_zip)
    for (split, name), label in got.items():  # and the generator's design: image i's big box is CLASSES[i % 7]
        assert label == CLASSES[int(name.split("_")[1]) % len(CLASSES)]
    assert {s: sum(r["split"] == s for r in rows) for s in ("train", "valid", "test")} == \
        {"train": 42, "valid": 14, "test": 14}
    with zipfile.ZipFile(dataset_zip) as zf:
        for r in rows[::9]:
            data = zf.read(f"{r['split']}/{r['filename']}")
            assert store.get_bytes(f"data/images/{r['split']}/{r['label']}/{r['filename']}") == data
            assert r["sha256"] == hashlib.sha256(data).hexdigest()
        # every original validation JPEG is kept, byte for byte, where aggregate's robustness figure reads it
        from common.robustness import validation_photos

        valid = [r for r in rows if r["split"] == "valid"]
        assert validation_photos(store, "data") == [(r["label"], zf.read(f"valid/{r['filename']}")) for r in valid]
    skipped = list(csv.DictReader(io.StringIO(store.get_text("data/skipped.csv"))))
    assert skipped == [{"split": "train", "filename": f"empty_0_jpg.rf.{0:032x}.jpg",
                        "reason": "no bounding boxes in _annotations.csv"}]
    assert not any("empty_0" in k for k in store.list("data/images"))
    assert store.get_json("data/classes.json") == list(CLASSES)
    counts = store.get_json("data/counts.json")
    assert counts["train"] == {c: 6 for c in CLASSES} and sum(counts["valid"].values()) == 14
    fp = store.get_json("data/fingerprint.json")
    assert fp["zip_sha256"] == hashlib.sha256(dataset_zip.read_bytes()).hexdigest()
    assert fp["images"] == {"train": 42, "valid": 14, "test": 14} and fp["skipped"] == 1
    success = store.is_complete("data")
    assert success["fingerprint"] == fp["fingerprint"] and success["sizes"] == [64]
    assert store.is_complete("data/tensors/64")["images"] == {"train": 42, "valid": 14, "test": 14}
    from common.shards import read_split

    t = read_split(store, "data/tensors/64", "valid", tmp_path / "shards")
    valid = [r for r in rows if r["split"] == "valid"]
    assert t["images"].shape == (14, 64, 64, 3) and t["images"].dtype == np.uint8
    assert list(t["filenames"]) == [r["filename"] for r in valid]
    assert [CLASSES[i] for i in t["labels"]] == [r["label"] for r in valid]
    assert "images" in result.output and "skipped (no boxes): 1" in result.output


def test_tie_breaks(tmp_path):
    """Equal score: more boxes wins; equal score and count: earlier in CLASSES wins, whatever the row order."""
    b = lab.Box
    # shark: one 20x10 box -> 200 x 1 = 200; fish: two 10x5 boxes -> 100 x 2 = 200: fish has more boxes
    assert lab.dominant([b("shark", 0, 0, 20, 10), b("fish", 0, 0, 10, 5), b("fish", 30, 0, 40, 5)], CLASSES) == \
        ("fish", 200.0)
    # penguin and jellyfish, identical boxes: jellyfish comes first in CLASSES
    for boxes in ([b("penguin", 0, 0, 10, 10), b("jellyfish", 20, 20, 30, 30)],
                  [b("jellyfish", 20, 20, 30, 30), b("penguin", 0, 0, 10, 10)]):
        assert lab.dominant(boxes, CLASSES)[0] == "jellyfish"
        assert lab.dominant(boxes, ("penguin", "jellyfish"))[0] == "penguin"  # the dataset's class order decides
    # Area x count, not area: three small starfish beat one larger stingray.
    assert lab.dominant([b("stingray", 0, 0, 20, 20)] + [b("starfish", 0, 0, 12, 12)] * 3, CLASSES)[0] == "starfish"
    # End to end: a tie written with the later class first in the CSV still goes to the earlier class.
    splits = small_splits()
    images, rows = splits["test"]
    name = sorted(images)[1]
    w, h = rows[first_row_of(rows, name)][1:3]
    rows[:] = [r for r in rows if r[0] != name] + [[name, w, h, "stingray", 0, 0, 10, 10],
                                                   [name, w, h, "puffin", 50, 50, 60, 60]]
    zip_path = write_zip(tmp_path / "tie.zip", splits)
    prepare_ok(zip_path, tmp_path / "store")
    got = {r["filename"]: r for r in read_labels(open_store(str(tmp_path / "store"))) if r["split"] == "test"}
    assert got[name]["label"] == "puffin" and got[name]["boxes"] == "2" and float(got[name]["score"]) == 100.0


# --- reruns --------------------------------------------------------------------------------------------------

def test_rerun_is_a_noop_and_new_sizes_are_added(dataset_zip, tmp_path):
    store_dir = tmp_path / "store"
    prepare_ok(dataset_zip, store_dir)
    before = {p: p.stat().st_mtime_ns for p in store_dir.rglob("*") if p.is_file()}
    result = prepare_ok(dataset_zip, store_dir)
    assert "already prepared" in result.output
    assert {p: p.stat().st_mtime_ns for p in store_dir.rglob("*") if p.is_file()} == before
    # With the expected sha256 given, a rerun does not even need the source.
    sha = hashlib.sha256(dataset_zip.read_bytes()).hexdigest()
    result = prepare_ok(tmp_path / "gone.zip", store_dir, "--sha256", sha)
    assert "already prepared" in result.output and "fetching" not in result.output
    # A size requested later: only that size is materialised, from the stored images.
    result = run("--source", dataset_zip, "--store", store_dir, "--image-sizes", "32,64")
    assert result.exit_code == 0, result.output
    assert "materialising missing sizes [32]" in result.output
    store = open_store(str(store_dir))
    assert store.is_complete("data")["sizes"] == [32, 64]
    assert store.is_complete("data/tensors/32")["images"]["train"] == 42
    assert all(p.stat().st_mtime_ns == before[p] for p in before if p.name != "_SUCCESS" or "tensors" in str(p))
    from common.shards import read_split

    assert read_split(store, "data/tensors/32", "test", tmp_path / "shards")["images"].shape == (14, 32, 32, 3)


def test_different_dataset_needs_force(dataset_zip, tmp_path):
    store_dir = tmp_path / "store"
    prepare_ok(dataset_zip, store_dir)
    store = open_store(str(store_dir))
    old = store.is_complete("data")["fingerprint"]
    other = make_dataset(tmp_path / "other.zip", counts=(14, 7, 7), seed=5)
    result = run("--source", other, "--store", store_dir, "--image-sizes", "64")
    assert result.exit_code == 2
    assert "already holds a different prepared dataset" in error_line(result) and "--force" in error_line(result)
    assert store.is_complete("data")["fingerprint"] == old
    prepare_ok(other, store_dir, "--force")
    assert store.is_complete("data")["fingerprint"] != old
    assert len(read_labels(store)) == 28
    assert not any(f"train_{i:03d}" in k for i in range(14, 42) for k in store.list("data/images/train"))


def test_unfinished_run_is_redone_from_scratch(dataset_zip, tmp_path):
    store = open_store(str(tmp_path / "store"))
    store.put_text("data/images/train/fish/stale.jpg", "left by a crashed run")
    store.put_text("data/labels.csv", "garbage")
    prepare_ok(dataset_zip, tmp_path / "store")
    assert not store.exists("data/images/train/fish/stale.jpg")
    assert len(read_labels(store)) == 70


# --- sources and stores --------------------------------------------------------------------------------------

def test_s3_source_and_s3_store_end_to_end(dataset_zip, s3_env):
    bucket = s3_env[len("s3://"):].split("/")[0]
    open_store(f"s3://{bucket}").upload("incoming/aquarium.zip", dataset_zip)
    prepare_ok(f"s3://{bucket}/incoming/aquarium.zip", s3_env)
    store = open_store(s3_env)
    keys = store.list("data")
    for key in ["data/_SUCCESS", "data/labels.csv", "data/skipped.csv", "data/classes.json", "data/counts.json",
                "data/fingerprint.json", "data/tensors/64/_SUCCESS", "data/tensors/64/index.json",
                "data/tensors/64/train-00000.tfrecord"]:
        assert key in keys
    assert sum(k.startswith("data/images/") for k in keys) == 70
    assert store.is_complete("data")["source"] == f"s3://{bucket}/incoming/aquarium.zip"
    result = prepare_ok(f"s3://{bucket}/incoming/aquarium.zip", s3_env)
    assert "already prepared" in result.output
    result = run("--source", f"s3://{bucket}/incoming/missing.zip", "--store", s3_env + "-2")
    assert result.exit_code == 2 and "does not exist" in error_line(result)


@pytest.fixture
def http_dir(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a folder; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_source(dataset_zip, http_dir, tmp_path):
    folder, base = http_dir
    (folder / "aquarium.zip").write_bytes(dataset_zip.read_bytes())
    sha = hashlib.sha256(dataset_zip.read_bytes()).hexdigest()
    prepare_ok(f"{base}/aquarium.zip?token=secret", tmp_path / "store", "--sha256", sha.upper())
    store = open_store(str(tmp_path / "store"))
    assert store.get_json("data/fingerprint.json")["source"] == f"{base}/aquarium.zip"  # no token in the store
    assert len(read_labels(store)) == 70
    result = run("--source", f"{base}/missing.zip", "--store", tmp_path / "s2")
    assert result.exit_code == 2 and "HTTP 404" in error_line(result)


def test_file_url_and_sweep_spec(dataset_zip, tmp_path):
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    (spec_dir / "local.zip").write_bytes(dataset_zip.read_bytes())
    (spec_dir / "sweep.yaml").write_text(
        "name: t\ndataset: {source: local.zip, prefix: prepared}\n"
        f"store: file://{tmp_path}/spec-store\n"
        "variants:\n  - {name: a, image_size: 32}\n  - {name: b, image_size: 48}\n")
    result = run("--config", spec_dir / "sweep.yaml")  # source found next to the spec, sizes from the variants
    assert result.exit_code == 0, result.output
    store = open_store(str(tmp_path / "spec-store"))
    assert store.is_complete("prepared")["sizes"] == [32, 48]
    # The command line overrides the spec: another store, a file:// source, one size.
    result = run("--config", spec_dir / "sweep.yaml", "--store", tmp_path / "other", "--source",
                 f"file://{dataset_zip}", "--image-sizes", "32")
    assert result.exit_code == 0, result.output
    assert open_store(str(tmp_path / "other")).is_complete("prepared")["sizes"] == [32]


def test_gdrive_detection():
    assert src.is_gdrive("https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz012345/view?usp=sharing")
    assert src.is_gdrive("1AbCdEfGhIjKlMnOpQrStUvWxYz012345")
    assert not src.is_gdrive("https://example.org/aquarium.zip")
    assert not src.is_gdrive("aquarium-tfcsv.zip")


# --- synthesize ----------------------------------------------------------------------------------------------

def test_synthesize(dataset_zip, tmp_path):
    result = prepare_ok(dataset_zip, tmp_path / "store", "--synthesize")
    store = open_store(str(tmp_path / "store"))
    rows = read_labels(store)
    synth = [r for r in rows if r["filename"].startswith("synth-")]
    # Independently: train images with two or more classes whose runner-up (by area x count) is not fish.
    expected = {}
    with zipfile.ZipFile(dataset_zip) as zf:
        boxes = {}
        for r in csv.DictReader(io.TextIOWrapper(zf.open("train/_annotations.csv"))):
            boxes.setdefault(r["filename"], []).append(r)
    for name, rs in boxes.items():
        score = {}
        for r in rs:
            area = (int(r["xmax"]) - int(r["xmin"])) * (int(r["ymax"]) - int(r["ymin"]))
            score.setdefault(r["class"], []).append(area)
        order = sorted(score, key=lambda c: -sum(score[c]) * len(score[c]))
        if len(order) >= 2 and order[1] != "fish":
            expected["synth-" + name] = (order[0], order[1], rs)
    assert len(expected) == 12
    assert {r["filename"]: r["label"] for r in synth} == {k: v[1] for k, v in expected.items()}
    assert all(r["split"] == "train" for r in synth)
    assert f"synthesized: {len(expected)}" in result.output
    assert store.get_json("data/fingerprint.json")["synthesized"] == 12
    assert store.is_complete("data/tensors/64")["images"]["train"] == 42 + 12
    from PIL import Image

    for name, (top, second, rs) in list(expected.items())[:4]:
        img = np.asarray(Image.open(io.BytesIO(store.get_bytes(f"data/images/train/{second}/{name}"))))
        for r in rs:
            x0, y0, x1, y1 = (int(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            inner = img[y0 + 3:y1 - 3, x0 + 3:x1 - 3].reshape(-1, 3).mean(axis=0)
            distance = np.abs(inner - np.array(COLOURS[r["class"]])).mean()
            if r["class"] == top:  # painted with the background: the class colour is gone
                assert distance > 40 and inner.max() < 110, (name, inner)
            else:  # the runner-up stays visible
                assert distance < 12, (name, inner)
    # A different synthesize setting is a different dataset.
    result = run("--source", dataset_zip, "--store", tmp_path / "store", "--image-sizes", "64")
    assert result.exit_code == 2 and "different prepared dataset" in error_line(result)


def test_header_constant_matches_the_job():
    assert lab.COLUMNS == HEADER


def test_exact_duplicate_box_rows_are_dropped_with_a_warning(tmp_path):
    """A box listed four times would count four times and flip the photo's label; duplicates are dropped and
    one warning line names the file and the rows."""
    splits = small_splits()
    images, rows = splits["train"]
    name = sorted(images)[0]  # image 0: a big box of its class and a small box of another class
    k = first_row_of(rows, name)
    big, small = rows[k], rows[k + 1]
    assert big[0] == small[0] == name and big[3] != small[3]
    rows[k + 2:k + 2] = [list(small) for _ in range(3)]  # rows k+3..k+5 (1-based) repeat row k+2
    store = tmp_path / "store"
    result = prepare_ok(write_zip(tmp_path / "dup.zip", splits), store)
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: train/_annotations.csv: dropped 3 exact duplicate box row(s) ({k + 3}, {k + 4}, "
                        f"{k + 5}): each repeats an earlier row; a box counts once in the label"]
    label = {r["filename"]: r for r in read_labels(open_store(str(store)))}[name]
    assert label["label"] == big[3] and label["boxes"] == "2"


def test_an_undecodable_photo_is_one_problem_not_many_bad_rows(tmp_path):
    splits = small_splits()
    images, rows = splits["valid"]
    name = sorted(images)[0]
    k = first_row_of(rows, name)
    w, h = rows[k][1], rows[k][2]
    rows[k + 1:k + 1] = [[name, w, h, "fish", 2 + j, 2, 10 + j, 10] for j in range(6)]  # 8 boxes in all
    images[name] = images[name][: len(images[name]) // 2]
    result = run("--source", write_zip(tmp_path / "bad.zip", splits), "--store", tmp_path / "s")
    line = error_line(result)
    assert result.exit_code == 2 and "does not decode" in line and "more bad rows" not in line, line
    rows[-1][3] = "whale"  # a second, different problem is still counted
    result = run("--source", write_zip(tmp_path / "bad2.zip", splits), "--store", tmp_path / "s")
    assert "does not decode" in error_line(result) and "(1 more bad rows in this file)" in error_line(result)


def test_a_store_of_npz_tensors_is_refused_by_training_and_rewritten_by_prepare(dataset_zip, tmp_path):
    """Issue 21: tensors are TFRecord shards. A store of the older layout (one .npz per split) is refused by a
    variant with the fix, and `prepare` of the same zip rewrites that size as shards from the stored photos."""
    from helpers import ROOT

    from common.config import load_sweep
    from common.train import load_data

    store_dir = tmp_path / "store"
    prepare_ok(dataset_zip, store_dir)
    store = open_store(str(store_dir))
    fingerprint = store.is_complete("data")["fingerprint"]
    store.delete_prefix("data/tensors/64")  # what a store prepared before issue 21 holds
    store.put_bytes("data/tensors/64/train.npz", b"npz")
    store.mark_complete("data/tensors/64", {"fingerprint": fingerprint, "size": 64, "images": {"train": 42}})
    with pytest.raises(BadInput, match=r"older layout \(one \.npz per split\): rerun `aquarium prepare --force`"):
        load_data(store, load_sweep(ROOT / "smoke.yaml"), 64, tmp_path / "local")
    result = prepare_ok(dataset_zip, store_dir)
    assert "materialising missing sizes [64]" in result.output
    assert store.is_complete("data/tensors/64")["format"] == "tfrecord-v1"
    assert not store.exists("data/tensors/64/train.npz")
    data = load_data(store, load_sweep(ROOT / "smoke.yaml"), 64, tmp_path / "local")
    assert data.splits["train"].count == 42 and data.fingerprint == fingerprint
