"""Shared fixtures: a real S3 server process on 127.0.0.1 and generated datasets in the Roboflow CSV layout."""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT))

# The precision every `precision: auto` variant of the suite computes in, set through the setting a user has
# (common/models.py: resolve_precision). float32 unless the run says otherwise: `AQUARIUM_PRECISION=mixed_bfloat16
# make test` runs the suite as a bfloat16 machine would; tests whose figures hold for float32 alone pin it
# (the `float32` fixture), and a test of bfloat16 itself asks for it explicitly.
os.environ.setdefault("AQUARIUM_PRECISION", "float32")
# `weights: imagenet` without a network: the shared ImageNet file for MobileNetV3Small (.ci/run sets it as well)
if (ROOT.parent / "shared" / "weights").is_dir():
    os.environ.setdefault("AQUARIUM_WEIGHTS", str(ROOT.parent / "shared" / "weights"))


@pytest.fixture
def float32(monkeypatch):
    """Pin float32 for a test whose tolerances hold in float32 only, whatever the run's AQUARIUM_PRECISION."""
    monkeypatch.setenv("AQUARIUM_PRECISION", "float32")
    import keras

    keras.config.set_dtype_policy("float32")

CLASSES = ("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray")
# One colour per class, so a small CNN can really learn the generated data.
COLOURS = {
    "fish": (230, 120, 20), "jellyfish": (200, 60, 220), "penguin": (20, 20, 20), "puffin": (240, 240, 240),
    "shark": (120, 120, 140), "starfish": (230, 30, 30), "stingray": (30, 200, 90),
}
HEADER = ["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real moto S3 server process over HTTP on 127.0.0.1; yields its endpoint URL."""
    port = _free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield endpoint
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment pointing boto3 at the test server, and a fresh bucket; yields an s3:// store URI."""
    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import boto3

    bucket = "t-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/store"


def _jpeg(width: int, height: int, boxes: list[tuple], rng: np.random.Generator) -> bytes:
    from PIL import Image

    base = rng.integers(20, 90, size=3)
    img = np.clip(base + rng.normal(0, 8, size=(height, width, 3)), 0, 255).astype(np.uint8)
    for cls, x0, y0, x1, y1 in boxes:
        img[y0:y1, x0:x1] = COLOURS[cls]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_rows(split: str, n: int, rng: np.random.Generator, size=(96, 72)):
    """n images of a split; each gets a dominant class (big box) and sometimes a small second class."""
    images, rows = {}, []
    for i in range(n):
        w, h = size if i % 2 == 0 else size[::-1]
        dominant = CLASSES[i % len(CLASSES)]
        boxes = [(dominant, 4, 4, w // 2 + 8, h // 2 + 8)]
        if i % 3 == 0:
            other = CLASSES[(i + 3) % len(CLASSES)]
            boxes.append((other, w - 20, h - 20, w - 4, h - 4))
        name = f"{split}_{i:03d}_jpg.rf.{i:032x}.jpg"
        images[name] = _jpeg(w, h, boxes, rng)
        rows += [[name, w, h, c, x0, y0, x1, y1] for c, x0, y0, x1, y1 in boxes]
    return images, rows


def write_zip(path: Path, splits: dict[str, tuple[dict, list]], extra: dict[str, bytes] | None = None) -> Path:
    """Write a zip in the Roboflow 'TensorFlow Object Detection CSV' layout: <split>/*.jpg + _annotations.csv."""
    with zipfile.ZipFile(path, "w") as zf:
        for split, (images, rows) in splits.items():
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(HEADER)
            writer.writerows(rows)
            zf.writestr(f"{split}/_annotations.csv", out.getvalue())
            for name, data in images.items():
                zf.writestr(f"{split}/{name}", data)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def make_dataset(path: Path, counts=(42, 14, 14), seed: int = 0, unannotated: int = 1) -> Path:
    """A small valid dataset zip: train/valid/test with every class present, plus unannotated train images."""
    rng = np.random.default_rng(seed)
    splits = {split: make_rows(split, n, rng) for split, n in zip(("train", "valid", "test"), counts)}
    for j in range(unannotated):  # an image with no boxes: prepare must list it as skipped
        splits["train"][0][f"empty_{j}_jpg.rf.{j:032x}.jpg"] = _jpeg(80, 60, [], rng)
    return write_zip(path, splits)


@pytest.fixture(scope="session")
def dataset_zip(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "aquarium-small.zip")


@pytest.fixture
def real_zip() -> Path:
    """The real Aquarium zip from AQUARIUM_ZIP; CI sets it. Skipped (visibly) when not given."""
    path = os.environ.get("AQUARIUM_ZIP")
    if not path:
        pytest.skip("AQUARIUM_ZIP not set")
    return Path(path)
