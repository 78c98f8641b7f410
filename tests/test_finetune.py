"""Fine-tuning MobileNetV3 for real (issue 19): frozen BatchNorm, the ImageNet file really loaded and used,
the two-phase recipe resumed bit for bit across its phase change, and AQUARIUM_WEIGHTS' errors."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from helpers import aquarium
from test_variants import _start, _wait_for_epoch, open_env_store, prepared, spec  # noqa: F401 (fixture)

from common.config import load_sweep, parse_sweep
from common.models import IMAGENET_FILES, build_finetune

SHARED_FILE = IMAGENET_FILES["small"][1]


@pytest.fixture
def imagenet_folder() -> Path:
    """The folder AQUARIUM_WEIGHTS names (CI and conftest point it at ../shared/weights). Skipped visibly without."""
    folder = Path(os.environ.get("AQUARIUM_WEIGHTS", ""))
    if not (folder / SHARED_FILE).is_file():
        pytest.skip(f"no {SHARED_FILE} in AQUARIUM_WEIGHTS={folder}")
    return folder


def finetune(**keys):
    base = {"name": "m", "kind": "finetune", "backbone": "small", "image_size": 64, "weights": "none"}
    return parse_sweep({"name": "s", "dataset": {"source": "x.zip"}, "variants": [{**base, **keys}]}).variants[0]


def test_batch_norm_keeps_its_statistics_and_training_mode_answers_as_inference(float32):
    """Keras 3 lets fit's training=True override the backbone's nested training=False (keras-team/keras#20285):
    trainable BatchNorm layers would normalise with batch statistics and rewrite their moving ones. They stay
    frozen: after a fit every moving statistic is unchanged, and the model answers the same in both modes."""
    from common.models import compile_model

    variant = finetune(trainable_layers="all", dropout=0.0)
    net = build_finetune(variant, 7, None)
    backbone = net.layers[1]
    rng = np.random.default_rng(0)
    for w in backbone.non_trainable_weights:  # moving statistics unlike a batch's: a rewrite shows
        w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
    before = [np.asarray(w).copy() for w in backbone.non_trainable_weights]
    x = rng.uniform(0, 255, (16, 64, 64, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(16) % 7, 7)
    kernel = np.asarray(backbone.get_layer("conv").kernel).copy()
    compile_model(net, variant).fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(kernel, np.asarray(backbone.get_layer("conv").kernel))  # it did train
    for a, b in zip(before, backbone.non_trainable_weights, strict=True):
        assert np.array_equal(a, np.asarray(b))
    np.testing.assert_allclose(net(x, training=True), net(x, training=False), atol=1e-5)


def test_the_shared_imagenet_file_is_what_the_backbone_holds(imagenet_folder, tmp_path, monkeypatch):
    """`weights: imagenet` with AQUARIUM_WEIGHTS loads the file by name: the first convolution is the file's."""
    import h5py

    from common.store import FileStore
    from common.train import resolve_weights

    monkeypatch.setenv("AQUARIUM_WEIGHTS", str(imagenet_folder))
    variant = finetune(weights="imagenet", image_size=96)
    path = resolve_weights(FileStore(str(tmp_path)), variant, tmp_path)
    assert Path(path) == imagenet_folder / SHARED_FILE
    net = build_finetune(variant, 7, path)
    with h5py.File(path) as f:
        stored = np.asarray(f["layers/conv2d/vars/0"])
    assert stored.shape == (3, 3, 3, 16) and np.abs(stored).max() > 0.1
    np.testing.assert_array_equal(np.asarray(net.layers[1].get_layer("conv").kernel), stored)
    random = build_finetune(variant, 7, None)
    assert not np.allclose(np.asarray(random.layers[1].get_layer("conv").kernel), stored)


def test_a_weights_folder_without_the_file_is_one_line_and_exit_2(prepared, tmp_path):
    uri, env = prepared
    config = spec(tmp_path, mnv3={"backbone": "small", "weights": "imagenet"})
    empty = tmp_path / "no-weights"
    empty.mkdir()
    run = aquarium("finetune-variant", "--config", config, "--variant", "mnv3", "--store", uri,
                   env={**env, "AQUARIUM_WEIGHTS": str(empty)})
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 2 and len(errors) == 1, run.stderr[-2000:]
    assert errors[0] == (f"error: variant mnv3: no weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5 in "
                         f"AQUARIUM_WEIGHTS={empty}: put it there (Keras fetches it from https://storage.googleapis"
                         f".com/tensorflow/keras-applications/mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float"
                         f"_no_top_v2.h5), or unset AQUARIUM_WEIGHTS to download it")


def test_two_phase_recipe_resumes_bit_for_bit_across_the_phase_change(prepared, tmp_path):
    """Head first (backbone frozen), then the last layers at a lower learning rate: killed anywhere after the
    head phase and resumed, the run ends with the history and answers of one never interrupted."""
    uri, env = prepared
    epochs, head = 6, 2
    mnv3 = {"backbone": "small", "image_size": 32, "epochs": epochs, "head_epochs": head, "steps_per_epoch": 2,
            "trainable_layers": 10, "optimizer": "adam", "learning_rate": 1e-3, "finetune_learning_rate": 1e-4,
            "early_stopping_patience": 50, "augment": {"frame": 0.5, "mixup": 0.2}}
    config = spec(tmp_path, mnv3=mnv3)
    sweep = load_sweep(config)
    store = open_env_store(uri, env)
    prefix = sweep.variant_prefix("mnv3")
    proc = _start(config, "mnv3", uri, env, job="finetune-variant")
    _wait_for_epoch(store, prefix, head + 1, proc)
    proc.kill()
    proc.wait()
    killed_at = store.get_json(f"{prefix}/checkpoint/state.json")["epoch"]
    assert head < killed_at < epochs and store.is_complete(prefix) is None

    resumed = aquarium("finetune-variant", "--config", config, "--variant", "mnv3", "--store", uri, env=env)
    assert resumed.returncode == 0 and f"resuming after epoch {killed_at}" in resumed.stderr, resumed.stderr[-2000:]
    plain_config = spec(tmp_path, mnv3=mnv3)
    plain = aquarium("finetune-variant", "--config", plain_config, "--variant", "mnv3", "--store", uri, env=env)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "phase of epochs 1-2 done; next: 10 backbone layers trainable" in plain.stderr
    plain_prefix = load_sweep(plain_config).variant_prefix("mnv3")
    history = list(csv.DictReader(io.StringIO(store.get_text(f"{prefix}/history.csv"))))
    assert [int(r["epoch"]) for r in history] == list(range(1, epochs + 1))
    assert [float(r["lr"]) for r in history] == pytest.approx([1e-3] * head + [1e-4] * (epochs - head))
    assert store.get_text(f"{prefix}/history.csv") == store.get_text(f"{plain_prefix}/history.csv")
    assert store.get_text(f"{prefix}/predictions.csv") == store.get_text(f"{plain_prefix}/predictions.csv")


@pytest.mark.realdata
def test_imagenet_features_beat_random_ones_on_the_real_photos(real_zip, imagenet_folder, tmp_path):
    """The same frozen-backbone run (only the head learns) on the real photos, from the ImageNet file and from
    random initialisation: the pretrained features must be far better on validation."""
    store = f"file://{tmp_path}/store"
    raw = {"name": "probe", "dataset": {"source": str(real_zip)}, "store": store,
           "defaults": {"kind": "finetune", "backbone": "small", "image_size": 96, "epochs": 4, "batch_size": 32,
                        "trainable_layers": 0, "optimizer": "adam", "learning_rate": 3e-3, "dropout": 0.0,
                        "augment": {"rotation": 0.0, "zoom": 0.0, "crop": 0.0}},
           "variants": [{"name": "imagenet", "weights": "imagenet"}, {"name": "random", "weights": "none"}]}
    config = tmp_path / "probe.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "AQUARIUM_WEIGHTS": str(imagenet_folder)}
    assert aquarium("prepare", "--config", config, env=env).returncode == 0
    val, logs = {}, {}
    for name in ("imagenet", "random"):
        run = aquarium("finetune-variant", "--config", config, "--variant", name, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        metrics = json.loads((tmp_path / "store" / "sweeps" / "probe" / "variants" / name / "metrics.json").read_text())
        val[name], logs[name] = metrics["val_accuracy"], run.stderr
    assert "weights ImageNet (mobilenet_v3_small_imagenet_no_top.weights.h5)" in logs["imagenet"]
    assert "weights none (random)" in logs["random"]
    assert val["imagenet"] >= val["random"] + 0.2, val
