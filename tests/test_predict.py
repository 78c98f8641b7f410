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
from PIL import Image

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
    assert loaded.size == SIZE and loaded.classes == list(reversed(CLASSES))
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


def test_missing_model_is_one_clear_error(tmp_path):
    run = _predict("--model", str(tmp_path / "nothing-here"), "x.jpg")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: no model at file://{tmp_path}/nothing-here")
