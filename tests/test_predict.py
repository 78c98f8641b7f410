"""predict: real JPEGs through decode_pad_resize into a real saved model; bad files fail alone."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from artefacts import SIZE, tiny_model_bytes
from common.config import CLASSES
from common.store import open_store


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A variant-like folder: model.keras and the metrics.json its classes are read from."""
    folder = tmp_path_factory.mktemp("variant")
    tiny_model_bytes(folder / "model.keras")
    classes = list(reversed(CLASSES))  # not the default order: proves the names come from metrics.json
    (folder / "metrics.json").write_text('{"classes": %s}' % str(classes).replace("'", '"'))
    return folder


def jpeg(path: Path, width: int, height: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 3] = (240, 30, 30)
    Image.fromarray(pixels).save(path, format="JPEG", quality=85)
    return path


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    good = {"wide": jpeg(tmp_path / "wide.jpg", 90, 40, 1), "tall": jpeg(tmp_path / "tall.jpg", 30, 70, 2)}
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good["wide"].read_bytes()[:300])  # a JPEG header with the image data cut off
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    png = tmp_path / "photo.png"
    Image.new("RGB", (30, 30), (1, 2, 3)).save(png)
    return {**good, "corrupt": corrupt, "text": text, "png": png}


def reference(model_path: Path, image: Path, pad: bool = True) -> np.ndarray:
    """What the model says about an image preprocessed the way prepare did (or, pad=False, naively)."""
    import keras
    import tensorflow as tf

    import common.models  # noqa: F401
    from common.pipeline import decode_pad_resize

    model = keras.models.load_model(model_path, compile=False)
    data = tf.constant(image.read_bytes())
    x = decode_pad_resize(data, SIZE) if pad else tf.image.resize(tf.io.decode_jpeg(data, channels=3), (SIZE, SIZE))
    return np.asarray(model(tf.cast(x, tf.float32)[None], training=False))[0]


def test_predict_uses_decode_pad_resize(model_dir, images):
    from common.predict import classify, load

    loaded = load(str(model_dir / "model.keras"))
    assert loaded.sizes == (SIZE,) and loaded.classes == list(reversed(CLASSES))
    out = list(classify(loaded, [str(images["wide"]), str(images["tall"])], trim=False))
    for p, name in zip(out, ("wide", "tall")):
        assert not p.error
        expected = reference(model_dir / "model.keras", images[name])
        np.testing.assert_allclose(p.probabilities, expected, rtol=1e-5, atol=1e-6)
        assert abs(p.probabilities.sum() - 1) < 1e-5
    # the comparison is sharp enough to notice a different preprocessing (no padding)
    naive = reference(model_dir / "model.keras", images["wide"], pad=False)
    assert np.abs(out[0].probabilities - naive).max() > 1e-4


def _predict(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "jobs.cli", "predict", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=Path(__file__).parent)


def test_bad_files_get_errors_and_the_rest_predictions(model_dir, images):
    files = [images[k] for k in ("wide", "corrupt", "text", "tall", "png")]
    run = _predict("--model", str(model_dir), *map(str, files), str(images["wide"].parent / "missing.jpg"))
    assert run.returncode == 2
    rows = list(csv.reader(io.StringIO(run.stdout)))
    classes = list(reversed(CLASSES))
    assert rows[0] == ["file", "predicted", *(f"p_{c}" for c in classes)]
    assert [r[0] for r in rows[1:]] == [str(images["wide"]), str(images["tall"])]
    for row, name in zip(rows[1:], ("wide", "tall")):
        probs = np.array([float(x) for x in row[2:]])
        np.testing.assert_allclose(probs, reference(model_dir / "model.keras", images[name]), atol=2e-6)
        assert row[1] == classes[int(probs.argmax())]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert f"error: {images['corrupt']}: corrupt JPEG" in run.stderr
    assert f"error: {images['text']}: not a JPEG image" in run.stderr
    assert f"error: {images['png']}: not a JPEG image" in run.stderr
    assert "missing.jpg: cannot read: No such file or directory" in run.stderr
    assert errors[-1] == "error: 4 of 6 files could not be classified (see above)"


def test_folder_and_best_model_from_s3(s3_env, model_dir, tmp_path):
    """`--model best` resolves to <sweep>/best/ in an S3 store; a folder gives its JPEGs, other files noted."""
    store = open_store(s3_env)
    store.upload("sweeps/rep/best/model.keras", model_dir / "model.keras")
    store.put_json("sweeps/rep/best/model_card.json", {"classes": list(CLASSES)})
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: rep\ndataset: {source: x.zip}\nvariants: [{name: a}]\n")
    album = tmp_path / "album"
    (album / "sub").mkdir(parents=True)
    jpeg(album / "b.JPG", 50, 50, 3)
    jpeg(album / "sub" / "a.jpeg", 20, 60, 4)
    (album / "README.txt").write_text("hello")
    run = _predict("--model", "best", "--config", str(spec), "--store", s3_env, str(album))
    assert run.returncode == 0, run.stderr
    rows = list(csv.reader(io.StringIO(run.stdout)))
    assert rows[0][:3] == ["file", "predicted", "p_fish"]  # the card's class order
    assert [r[0] for r in rows[1:]] == [str(album / "b.JPG"), str(album / "sub" / "a.jpeg")]
    np.testing.assert_allclose([float(x) for x in rows[2][2:]],
                               reference(model_dir / "model.keras", album / "sub" / "a.jpeg"), atol=2e-6)
    assert f"note: {album}: skipped 1 non-JPEG files" in run.stderr


def test_a_reader_that_goes_away_ends_predict_quietly(model_dir, images):
    """`aquarium predict ... | head`: the reader closes the pipe; predict stops without a traceback or error line."""
    child = subprocess.Popen([sys.executable, "-m", "jobs.cli", "predict", "--model", str(model_dir / "model.keras"),
                              str(images["wide"]), str(images["tall"])], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    child.stdout.close()  # before predict writes its first line
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "error:" not in stderr and "Broken pipe" not in stderr


def test_missing_model_is_one_clear_error(tmp_path):
    run = _predict("--model", str(tmp_path / "nothing-here"), "x.jpg")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: no model at file://{tmp_path}/nothing-here")


# --- border trimming, streaming, progress -------------------------------------------------------------------------

def photo(width: int, height: int, seed: int, scale: float = 1.0) -> Image.Image:
    """A busy generated photo: colour gradients, noise and a few solid discs (no uniform edge lines)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([60 + 80 * xx / width, 90 + 60 * yy / height, 150 - 50 * xx / width], -1)
    img = img + rng.normal(0, 6, (height, width, 3))
    for _ in range(4):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(10, height // 3)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
    return Image.fromarray(np.clip(img * scale, 0, 255).astype(np.uint8))


def plain_background(width: int, height: int, seed: int) -> Image.Image:
    """A fish on open water: a smooth vertical gradient (lighter near the surface), little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([20 + 0 * xx, 90 + 30 * yy / height, 160 - 20 * yy / height], -1)
    img = img + rng.normal(0, 1.5, (height, width, 3))
    img[(xx - width / 2) ** 2 / 4 + (yy - height / 2) ** 2 < (height / 6) ** 2] = (230, 120, 20)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def encode(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def trimmed_shape(data: bytes, **kwargs) -> tuple[int, int]:
    import tensorflow as tf

    from common.pipeline import trim_borders

    return tuple(trim_borders(tf.io.decode_jpeg(data, channels=3), **kwargs).shape[:2])


COLOURS = [(0, 0, 0), (255, 255, 255), (128, 128, 128), (0, 90, 160), (250, 200, 0)]


@pytest.mark.parametrize("colour", COLOURS, ids=lambda c: "rgb-%d-%d-%d" % c)
def test_trim_removes_letterbox_bars_and_borders_of_any_colour(colour):
    """What is left is the photo, give or take JPEG's blurred seam, and the model input is close to the
    original's, far closer than without trimming."""
    from common.pipeline import decode_pad_resize

    original = photo(320, 200, 1)
    framed = {"letterbox": ImageOps.pad(original, (320, 320), color=colour),
              "pillarbox": ImageOps.pad(original.transpose(Image.Transpose.ROTATE_90), (320, 320), color=colour),
              "border": ImageOps.expand(original, 12, fill=colour),
              "both": ImageOps.expand(ImageOps.pad(original, (320, 320), color=colour), 10, fill=colour)}
    reference = decode_pad_resize(encode(original), 64).numpy().astype(float)
    for name, im in framed.items():
        h, w = trimmed_shape(encode(im))
        expected = (320, 200) if name == "pillarbox" else (200, 320)
        assert abs(h - expected[0]) <= 4 and abs(w - expected[1]) <= 4, (name, h, w)
        if name == "pillarbox":
            continue
        kept = np.abs(decode_pad_resize(encode(im), 64, trim=True).numpy() - reference).mean()
        framed_diff = np.abs(decode_pad_resize(encode(im), 64).numpy() - reference).mean()
        assert kept < 4 and (colour == (0, 0, 0) or framed_diff > 4 * kept), (name, kept, framed_diff)


def test_trim_leaves_photos_without_a_frame_alone():
    """A plain-background photo (open water, a gradient) and a busy photo keep every pixel."""
    for im in (plain_background(320, 240, 2), plain_background(240, 320, 3), photo(300, 300, 4)):
        assert trimmed_shape(encode(im)) == (im.height, im.width)


def test_trim_is_bounded_and_needs_matching_opposite_sides():
    small = photo(100, 60, 5)
    huge_frame = ImageOps.expand(small, 120, fill=(255, 255, 255))  # 340 x 300: the photo is a fifth of it
    h, w = trimmed_shape(encode(huge_frame), max_share=0.25)
    assert (h, w) == (300 - 2 * 75, 340 - 2 * 85)
    # bars of two different colours are not a frame (a sky above, sand below); nothing is cut
    im = np.asarray(ImageOps.pad(photo(320, 200, 6), (320, 320), color=(255, 255, 255))).copy()
    im[260:] = (40, 40, 40)
    assert trimmed_shape(encode(Image.fromarray(im))) == (320, 320)


def test_classify_streams_with_bounded_read_ahead(model_dir, tmp_path):
    """The first rows come before the later files are even read: files deleted after the first result fail
    as unreadable, and the ones before them are classified."""
    from common.predict import classify, load

    files = [str(jpeg(tmp_path / f"p{i:03d}.jpg", 40, 30, i)) for i in range(120)]
    stream = classify(load(str(model_dir / "model.keras")), files, batch=4)
    first = next(stream)
    for f in files[60:]:
        os.remove(f)
    rest = [first, *stream]
    assert [p.file for p in rest] == files
    assert all(p.probabilities is not None for p in rest[:20])
    assert all(p.error.startswith("cannot read") for p in rest[60:])


def _predict_on_terminal(*args) -> tuple[int, str, str]:
    """Run predict with stderr on a pseudo-terminal; (exit code, stdout, what the terminal showed)."""
    import pty
    import threading

    master, slave = pty.openpty()
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TERM": "xterm", "COLUMNS": "100"}
    run = subprocess.run([sys.executable, "-m", "jobs.cli", "predict", *args], stdout=subprocess.PIPE,
                         stderr=slave, text=True, env=env, timeout=300, cwd=Path(__file__).parent)
    os.close(slave)
    reader.join(10)
    os.close(master)
    return run.returncode, run.stdout, b"".join(chunks).decode(errors="replace")


def test_cli_trims_by_default_shows_progress_and_no_trim_borders_turns_it_off(model_dir, tmp_path):
    original = photo(320, 200, 7)
    (tmp_path / "original.jpg").write_bytes(encode(original))
    for i, colour in enumerate(COLOURS[1:]):
        (tmp_path / f"framed{i}.jpg").write_bytes(encode(ImageOps.pad(original, (320, 320), color=colour)))
    code, out, terminal = _predict_on_terminal("--model", str(model_dir), str(tmp_path))
    assert code == 0, terminal
    assert "classifying" in terminal and "5/5" in terminal  # rich's bar, on the terminal only
    run = _predict("--model", str(model_dir), "--no-trim-borders", str(tmp_path))
    assert run.returncode == 0 and "classifying" not in run.stderr
    for text in (out, run.stdout):
        assert [r[0] for r in list(csv.reader(io.StringIO(text)))[1:]] == sorted(map(str, tmp_path.glob("*.jpg")))
    trimmed, untrimmed = ({r[0]: np.array(r[2:], float) for r in list(csv.reader(io.StringIO(t)))[1:]}
                          for t in (out, run.stdout))
    base = trimmed[str(tmp_path / "original.jpg")]
    for i in range(len(COLOURS) - 1):
        framed = str(tmp_path / f"framed{i}.jpg")
        assert np.abs(trimmed[framed] - base).max() < np.abs(untrimmed[framed] - base).max()


# --- robustness to the frame ----------------------------------------------------------------------------------

def brightness_model(size: int):
    """A fixed model that answers by the mean brightness of its input: class 0 when dark, 1 when bright. A frame
    of bright bars changes its answer; that is what `robustness` must see."""
    import keras

    inputs = keras.Input((size, size, 3))
    dense = keras.layers.Dense(len(CLASSES), activation="softmax")
    outputs = dense(keras.layers.GlobalAveragePooling2D()(inputs))
    weights = np.zeros((3, len(CLASSES)), np.float32)
    weights[:, 0], weights[:, 1] = -0.05, 0.05
    bias = np.full(len(CLASSES), -100.0, np.float32)
    bias[0], bias[1] = 0.05 * 3 * 100, -0.05 * 3 * 100  # the boundary: a mean of 100 per channel
    dense.set_weights([weights, bias])
    return keras.Model(inputs, outputs)


def test_robustness_measures_agreement_and_accuracy_per_copy(model_dir, float32):
    import keras

    import common.models  # noqa: F401
    from common.ensemble import ensemble_model
    from common.robustness import COPIES, model_classifier, robustness

    jpegs = [encode(photo(160, 90, seed, scale=0.4)) for seed in range(6)]  # dark photos: class 0
    labels = [0, 0, 0, 0, 0, 1]
    copies = {"identity": (lambda im: im, 95), **{k: COPIES[k] for k in ("letterbox-white", "mirror")}}
    result = robustness(model_classifier(brightness_model(32), 32), jpegs, labels, copies)
    assert result["images"] == 6 and result["accuracy"] == pytest.approx(5 / 6)
    assert set(result["copies"]) == set(copies)
    assert result["copies"]["identity"] == {"accuracy": pytest.approx(5 / 6), "agreement": 1.0,
                                            "trimmed_accuracy": pytest.approx(5 / 6), "trimmed_agreement": 1.0}
    white = result["copies"]["letterbox-white"]
    assert white["agreement"] == 0.0 and white["accuracy"] == pytest.approx(1 / 6)  # the bars decide
    assert white["trimmed_agreement"] == 1.0  # trimming gives the photo back
    assert result["min_agreement"] == 0.0 and result["agreement"] == pytest.approx(2 / 3)
    assert result["trimmed_min_agreement"] == 1.0
    # a real saved model and an ensemble model of two input sizes go through the same interface
    tiny_model = keras.models.load_model(model_dir / "model.keras", compile=False)
    tiny, bright = model_classifier(tiny_model, SIZE), brightness_model(48)
    both = model_classifier(ensemble_model([tiny_model, bright], "both"), (SIZE, 48))
    np.testing.assert_allclose(both(jpegs, False), (tiny(jpegs, False) + model_classifier(
        bright, 48)(jpegs, False)) / 2, atol=1e-6)
    # decoded once per set of sizes and shared: the same answers as each model decoding for itself
    from common.robustness import classify_all

    shared = classify_all({"tiny": tiny, "both": both, "bright": model_classifier(bright, 48)}, jpegs, True)
    for name, classify in (("tiny", tiny), ("both", both)):
        np.testing.assert_allclose(shared[name], classify(jpegs, True), atol=1e-6)
    full = robustness(tiny, jpegs[:2], labels[:2])
    assert set(full["copies"]) == set(COPIES)
    assert all(0 <= v <= 1 for row in full["copies"].values() for v in row.values())


def test_robustness_measured_in_chunks_equals_the_whole_split():
    """aggregate measures the validation photos CHUNK at a time (bounded memory): merging the chunks' figures
    must give what one pass over all photos gives."""
    from common.robustness import COPIES, merged, model_classifier, robustness

    jpegs = [encode(photo(120, 90, seed, scale=0.2 + 0.15 * seed)) for seed in range(7)]  # dark to bright
    labels = [0, 0, 0, 1, 1, 1, 0]
    copies = {k: COPIES[k] for k in ("letterbox-white", "letterbox-black", "mirror")}
    classify = model_classifier(brightness_model(32), 32)
    whole = robustness(classify, jpegs, labels, copies)
    parts = merged([robustness(classify, jpegs[a:b], labels[a:b], copies) for a, b in ((0, 3), (3, 6), (6, 7))])
    assert parts["images"] == 7 and parts["accuracy"] == pytest.approx(whole["accuracy"])
    for key in ("agreement", "min_agreement", "trimmed_agreement", "trimmed_min_agreement"):
        assert parts[key] == pytest.approx(whole[key])
    for name, row in whole["copies"].items():
        assert parts["copies"][name] == pytest.approx(row)
    assert 0 < whole["copies"]["letterbox-white"]["agreement"] < 1  # the figures are not trivially equal
