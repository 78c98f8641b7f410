"""Variant training for real: smoke variants on generated data through a real S3 server process."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, aquarium

from common.config import CLASSES, load_sweep
from common.metrics import classification_metrics
from common.store import open_store


@pytest.fixture(scope="module")
def prepared(s3_server, dataset_zip, tmp_path_factory):
    """A bucket with the generated dataset prepared at 32 and 64 px; yields (store URI, env for subprocesses)."""
    import boto3

    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = "v-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/store"
    done = aquarium("prepare", "--source", dataset_zip, "--store", uri, "--image-sizes", "32,64", env=env)
    assert done.returncode == 0, done.stderr
    return uri, env


def spec(tmp_path: Path, **overrides) -> Path:
    """smoke.yaml under a fresh sweep name (so tests do not share results), with variant overrides."""
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["name"] = "t" + uuid.uuid4().hex[:8]
    for v in raw["variants"]:
        v.update(overrides.get(v["name"], {}))
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def open_env_store(uri, env):
    old = dict(os.environ)
    os.environ.update(env)
    try:
        return open_store(uri)
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_cnn_variant_writes_every_artefact_and_metrics_match_predictions(prepared, tmp_path):
    uri, env = prepared
    config = spec(tmp_path, **{"cnn-a": {"test_time_flip": True}})  # evaluated and saved flip-averaged
    # one intra-op thread, as the local executor gives each of two variants on two cores: recorded with the result
    done = aquarium("train-variant", "--config", config, "--variant", "cnn-a", "--store", uri,
                    env={**env, "TF_NUM_INTRAOP_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    sweep = load_sweep(config)
    variant = sweep.variant("cnn-a")
    store = open_env_store(uri, env)
    prefix = sweep.variant_prefix("cnn-a")

    assert store.is_complete(prefix)["config_hash"] == variant.config_hash
    cfg = store.get_json(f"{prefix}/config.json")
    assert cfg["config_hash"] == variant.config_hash and cfg["variant"]["name"] == "cnn-a"
    assert cfg["dataset_fingerprint"] and "tensorflow" in " ".join(cfg["versions"])
    assert (cfg["precision"], cfg["cpu_threads"]) == ("float32", 1)
    status = store.get_json(f"{prefix}/status.json")
    assert status["phase"] == "succeeded" and status["epoch"] == variant.epochs and status["exit_code"] == 0
    history = list(csv.DictReader(io.StringIO(store.get_text(f"{prefix}/history.csv"))))
    assert [int(r["epoch"]) for r in history] == list(range(1, variant.epochs + 1))
    assert set(history[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert "val accuracy" in store.get_text(f"{prefix}/job.log")

    # metrics.json must agree with an independent computation from predictions.csv
    metrics = store.get_json(f"{prefix}/metrics.json")
    rows = list(csv.DictReader(io.StringIO(store.get_text(f"{prefix}/predictions.csv"))))
    for split, key in (("valid", "val"), ("test", "test")):
        part = [r for r in rows if r["split"] == split]
        assert part, split
        probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in part])
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
        assert all(r["predicted"] == CLASSES[p] for r, p in zip(part, probs.argmax(axis=1)))
        accuracy = np.mean([r["true"] == r["predicted"] for r in part])
        assert metrics[f"{key}_accuracy"] == pytest.approx(accuracy)
        truth = [CLASSES.index(r["true"]) for r in part]
        loss = -np.mean(np.log(np.clip(probs[np.arange(len(part)), truth], 1e-7, 1)))
        assert metrics[f"{key}_loss"] == pytest.approx(loss, rel=1e-3)
        for i, c in enumerate(CLASSES):
            tp = sum(r["true"] == c and r["predicted"] == c for r in part)
            fp = sum(r["true"] != c and r["predicted"] == c for r in part)
            fn = sum(r["true"] == c and r["predicted"] != c for r in part)
            tn = len(part) - tp - fp - fn
            got = metrics[key]["per_class"][c]
            assert got["support"] == tp + fn
            assert got["recall"] == pytest.approx(tp / (tp + fn) if tp + fn else 0)
            assert got["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0)
            assert got["specificity"] == pytest.approx(tn / (tn + fp) if tn + fp else 0)
            assert metrics[key]["confusion"][i][i] == tp
    assert 1 <= metrics["best_epoch"] <= variant.epochs
    assert metrics["classes"] == list(CLASSES)

    # the saved model takes decode_pad_resize's output as is and reproduces predictions.csv
    import keras

    import common.models  # noqa: F401
    from common.shards import read_split

    model_path = tmp_path / "model.keras"
    store.download(f"{prefix}/model.keras", model_path)
    model = keras.models.load_model(model_path)
    test = read_split(store, f"data/tensors/{variant.image_size}", "test", tmp_path / "shards")
    got = model.predict(test["images"].astype("float32"), verbose=0)
    want = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows if r["split"] == "test"])
    assert np.allclose(got, want, atol=1e-4)
    mirrored = model.predict(test["images"][:, :, ::-1].astype("float32"), verbose=0)
    assert np.allclose(got, mirrored, atol=1e-5)  # test_time_flip: the same answer for the mirror image


def test_rerun_skips_finished_variant_and_force_retrains(prepared, tmp_path):
    uri, env = prepared
    config = spec(tmp_path)
    assert aquarium("train-variant", "--config", config, "--variant", "cnn-b", "--store", uri, env=env).returncode == 0
    store = open_env_store(uri, env)
    prefix = load_sweep(config).variant_prefix("cnn-b")
    first = store.get_json(f"{prefix}/_SUCCESS")["finished_at"]
    again = aquarium("train-variant", "--config", config, "--variant", "cnn-b", "--store", uri, env=env)
    assert again.returncode == 0 and "skipped" in again.stdout
    assert store.get_json(f"{prefix}/_SUCCESS")["finished_at"] == first

    changed = spec(tmp_path, **{"cnn-b": {"dropout": 0.5}})  # another config hash: not skipped
    raw = yaml.safe_load(changed.read_text())
    raw["name"] = load_sweep(config).name
    changed.write_text(yaml.safe_dump(raw))
    retrained = aquarium("train-variant", "--config", changed, "--variant", "cnn-b", "--store", uri, env=env)
    assert retrained.returncode == 0 and "skipped" not in retrained.stdout
    assert store.get_json(f"{prefix}/_SUCCESS")["config_hash"] == load_sweep(changed).variant("cnn-b").config_hash


def _start(config, variant, uri, env, job="train-variant"):
    return subprocess.Popen([sys.executable, "-m", "jobs.cli", job, "--config", str(config),
                             "--variant", variant, "--store", uri], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_epoch(store, prefix, epoch, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if store.get_json(f"{prefix}/checkpoint/state.json")["epoch"] >= epoch:
                return
        except KeyError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"epoch {epoch} not reached")


@pytest.mark.parametrize("cache_mb", [256, 0], ids=["in-memory", "streamed"])
def test_killed_variant_resumes_exactly_as_the_uninterrupted_run(prepared, tmp_path, cache_mb):
    """SIGKILL after epoch 3, resume: history, final weights and optimizer state equal an uninterrupted run's,
    bit for bit -- shuffle, augmentation, mixup and dropout are keyed to (seed, epoch/step), not to the process;
    with the train split in memory, and streamed from its shards through the shuffle buffer (`cache_mb: 0`)."""
    uri, env = prepared
    epochs, steps = 8, 3
    cnn_a = {"epochs": epochs, "steps_per_epoch": steps, "early_stopping_patience": 50,
             "augment": {"contrast": 0.2, "mixup": 0.2, "frame": 0.5, "border": 0.3, "content_crop": 0.3},
             "dropout": 0.3, "cache_mb": cache_mb, "shuffle_buffer": 16}
    config = spec(tmp_path, **{"cnn-a": cnn_a})
    sweep = load_sweep(config)
    store = open_env_store(uri, env)
    prefix = sweep.variant_prefix("cnn-a")

    proc = _start(config, "cnn-a", uri, env)
    _wait_for_epoch(store, prefix, 3, proc)
    proc.kill()  # SIGKILL: no chance to clean up, like a node loss
    proc.wait()
    state = store.get_json(f"{prefix}/checkpoint/state.json")
    killed_at = state["epoch"]
    assert store.is_complete(prefix) is None and killed_at < epochs
    before = state["history"]

    resumed = aquarium("train-variant", "--config", config, "--variant", "cnn-a", "--store", uri, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {killed_at}" in resumed.stderr
    history = list(csv.DictReader(io.StringIO(store.get_text(f"{prefix}/history.csv"))))
    assert [int(r["epoch"]) for r in history] == list(range(1, epochs + 1))  # no epoch lost or repeated
    assert [float(r["loss"]) for r in history[:killed_at]] == pytest.approx([r["loss"] for r in before])

    # the same variant (same config hash) under another sweep name, never interrupted
    plain_config = spec(tmp_path, **{"cnn-a": cnn_a})
    plain_prefix = load_sweep(plain_config).variant_prefix("cnn-a")
    plain = aquarium("train-variant", "--config", plain_config, "--variant", "cnn-a", "--store", uri, env=env)
    assert plain.returncode == 0, plain.stderr
    assert store.get_text(f"{prefix}/history.csv") == store.get_text(f"{plain_prefix}/history.csv")
    assert store.get_text(f"{prefix}/predictions.csv") == store.get_text(f"{plain_prefix}/predictions.csv")

    # final weights and optimizer state: equal, and the step counter covers every epoch
    from common.train import load_checkpoint

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    model, last = load_checkpoint(store, prefix, sweep.variant("cnn-a"), len(CLASSES), tmp_path / "a")
    other, _ = load_checkpoint(store, plain_prefix, sweep.variant("cnn-a"), len(CLASSES), tmp_path / "b")
    assert last["epoch"] == epochs and int(model.optimizer.iterations) == epochs * steps
    for a, b in zip(model.get_weights() + model.optimizer.variables, other.get_weights() + other.optimizer.variables,
                    strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_progress_and_exits_143(prepared, tmp_path):
    uri, env = prepared
    config = spec(tmp_path, **{"cnn-a": {"epochs": 200, "early_stopping_patience": 500}})
    store = open_env_store(uri, env)
    prefix = load_sweep(config).variant_prefix("cnn-a")
    proc = _start(config, "cnn-a", uri, env)
    _wait_for_epoch(store, prefix, 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 143
    status = store.get_json(f"{prefix}/status.json")
    assert status["phase"] == "interrupted" and "SIGTERM" in status["error"]
    assert store.exists(f"{prefix}/job.log") and store.is_complete(prefix) is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the printed raise, as intended
def test_a_sigterm_swallowed_by_a_finaliser_still_stops_training():
    """The handler's raise can land in a finaliser (`__del__` of a collected tf.data iterator), where Python only
    prints it ("Exception ignored in ..."): SigtermStop, in every fit, raises Interrupted after the next batch."""
    import keras

    from common import train
    from common.errors import Interrupted

    class Finaliser:
        def __del__(self):
            train._on_sigterm(signal.SIGTERM, None)

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    train._sigterm_seen[0] = False
    try:
        Finaliser()  # collected at once: the Interrupted it raises is printed, not raised here
        assert train._sigterm_seen[0]
        batches = []
        with pytest.raises(Interrupted, match="SIGTERM"):
            model.fit(np.zeros((64, 4), "float32"), np.zeros((64, 2), "float32"), batch_size=8, epochs=3, verbose=0,
                      callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b)),
                                 train.SigtermStop()])
        assert batches == [0]  # stopped after the first batch, not at the end of the three epochs
    finally:
        train._sigterm_seen[0] = False


def test_missing_dataset_is_bad_input_and_recorded(s3_env, tmp_path):
    config = spec(tmp_path)
    done = aquarium("train-variant", "--config", config, "--variant", "cnn-a", "--store", s3_env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: no prepared dataset at s3://")
    store = open_store(s3_env)
    prefix = load_sweep(config).variant_prefix("cnn-a")
    assert store.get_json(f"{prefix}/status.json")["phase"] == "failed"
    assert store.exists(f"{prefix}/job.log") and store.is_complete(prefix) is None


def test_finetune_loads_weights_file_staged_in_the_store(prepared, tmp_path):
    """An air-gapped cluster stages the backbone weights once in the store; every pod reads them from there."""
    import keras

    uri, env = prepared
    backbone = keras.applications.MobileNetV3Large(input_shape=(64, 64, 3), include_top=False, weights=None,
                                                   pooling="avg")
    for w in backbone.weights:  # recognisable values, unlike any fresh initialisation
        w.assign(np.full(w.shape, 0.0123, dtype="float32"))
    weights_file = tmp_path / "mnv3.weights.h5"
    backbone.save_weights(weights_file)
    store = open_env_store(uri, env)
    store.upload("staged/mnv3.weights.h5", weights_file)

    config = spec(tmp_path, mnv3={"backbone": "large", "weights": f"{uri}/staged/mnv3.weights.h5",
                                  "trainable_layers": 2, "head_epochs": 0, "epochs": 1})
    done = aquarium("finetune-variant", "--config", config, "--variant", "mnv3", "--store", uri, env=env)
    assert done.returncode == 0, done.stderr
    prefix = load_sweep(config).variant_prefix("mnv3")
    store.download(f"{prefix}/model.keras", tmp_path / "model.keras")
    import common.models  # noqa: F401

    trained = keras.models.load_model(tmp_path / "model.keras")
    frozen = trained.get_layer(backbone.name).get_layer("conv")  # the first, frozen, backbone conv
    assert np.allclose(frozen.get_weights()[0], 0.0123)

    missing = spec(tmp_path, mnv3={"backbone": "large", "weights": f"{uri}/staged/nope.weights.h5"})
    bad = aquarium("finetune-variant", "--config", missing, "--variant", "mnv3", "--store", uri, env=env)
    assert bad.returncode == 2 and "nope.weights.h5 not found" in bad.stderr


def test_metrics_by_hand():
    classes = ["a", "b", "c"]
    m = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], classes)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "specificity": 2 / 3, "f1": 0.5, "support": 2})
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["recall"] == 1.0
    assert m["per_class"]["c"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "specificity": 1.0, "f1": 0.0, "support": 1})
    assert m["macro"]["recall"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_rerun_with_the_same_seed_reproduces_the_history(prepared, tmp_path):
    """README promises it: seeded training with op determinism gives the same history twice."""
    uri, env = prepared
    config = spec(tmp_path)
    store = open_env_store(uri, env)
    prefix = load_sweep(config).variant_prefix("cnn-b")
    histories = []
    for _ in range(2):
        done = aquarium("train-variant", "--config", config, "--variant", "cnn-b", "--store", uri, "--force", env=env)
        assert done.returncode == 0, done.stderr
        histories.append(store.get_text(f"{prefix}/history.csv"))
    assert histories[0] == histories[1] and len(histories[0].splitlines()) == 3
