"""Test-time flip averaging and the top-k ensemble row: real Keras models, real files in a store, real CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from artefacts import tiny_model_bytes
from helpers import aquarium
from common.config import CLASSES, parse_sweep
from common.metrics import evaluation
from common.report import aggregate, collect, ensemble_row
from common.status import marker
from common.store import FileStore, join

VAL, TEST = 14, 7  # photos per split: two (one) of each class


def raw_spec(top_k: int, sizes: dict[str, int]) -> dict:
    return {"name": "ens", "dataset": {"source": "x.zip"}, "ensemble_top_k": top_k,
            "variants": [{"name": n, "image_size": s, "epochs": 2} for n, s in sizes.items()]}


def spec(top_k: int, sizes: dict[str, int]):
    return parse_sweep(raw_spec(top_k, sizes))


def probabilities(labels: np.ndarray, wrong: np.ndarray, sure: float, unsure: float) -> np.ndarray:
    """Each photo's probabilities: `sure` on its class, or -- where `wrong` -- `unsure` on it and the rest on
    the next class (a wrong answer that another member's sure answer outweighs)."""
    probs = np.zeros((len(labels), len(CLASSES)))
    for i, (label, miss) in enumerate(zip(labels, wrong)):
        probs[i, label] = unsure if miss else sure
        probs[i, (label + 1) % len(CLASSES)] = 1 - probs[i, label]
    return probs


def write_variant(store: FileStore, sweep, name: str, wrong_val: np.ndarray, wrong_test: np.ndarray,
                  model: bytes) -> dict:
    """A finished variant whose metrics.json and predictions.csv come from its probabilities, as training makes them."""
    v, prefix = sweep.variant(name), sweep.variant_prefix(name)
    labels = {s: np.arange(n) % len(CLASSES) for s, n in (("valid", VAL), ("test", TEST))}
    splits = {"valid": (labels["valid"], probabilities(labels["valid"], wrong_val, 0.9, 0.45),
                        [f"v{i}.jpg" for i in range(VAL)]),
              "test": (labels["test"], probabilities(labels["test"], wrong_test, 0.9, 0.45),
                       [f"t{i}.jpg" for i in range(TEST)])}
    metrics, predictions = evaluation(list(CLASSES), splits)
    metrics.update(config_hash=v.config_hash, best_epoch=2)
    store.put_json(join(prefix, "config.json"), {"variant": v.model_dump(), "config_hash": v.config_hash,
                                                 "dataset_fingerprint": "fp-1"})
    store.put_json(join(prefix, "status.json"), {"phase": "succeeded", **marker(v)})
    store.put_json(join(prefix, "metrics.json"), metrics)
    store.put_text(join(prefix, "predictions.csv"), predictions)
    store.put_bytes(join(prefix, "model.keras"), model)
    store.mark_complete(prefix, marker(v))
    return metrics


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    first = np.arange(n) < n // 2
    return first, ~first


@pytest.fixture
def store(tmp_path) -> FileStore:
    return FileStore(str(tmp_path / "store"))


def test_flip_averaged_model_answers_the_same_for_a_photo_and_its_mirror(tmp_path):
    from common.config import Variant
    from common.models import build_cnn, inference_model
    from common.predict import load

    variant = Variant(name="flip", image_size=32, test_time_flip=True, precision="float32")  # 1e-6 tolerances
    net = build_cnn(variant, len(CLASSES))
    model = inference_model(net, variant)
    model.save(tmp_path / "model.keras")
    (tmp_path / "metrics.json").write_text(json.dumps({"classes": list(CLASSES)}))  # the names predict reads
    loaded = load(str(tmp_path / "model.keras"))  # predict's loader: the Mirror layer is registered
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    mirrored = x[:, :, ::-1]
    out = np.asarray(loaded.model(x))
    np.testing.assert_allclose(out, np.asarray(loaded.model(mirrored)), atol=1e-6)
    np.testing.assert_allclose(out, (np.asarray(net(x)) + np.asarray(net(mirrored))) / 2, atol=1e-6)
    assert np.abs(np.asarray(net(x)) - np.asarray(net(mirrored))).max() > 1e-4  # the net alone does differ
    assert inference_model(net, Variant(name="plain", image_size=32)) is net


def test_ensemble_of_the_top_k_is_a_row_and_can_be_the_best_model(store, tmp_path, float32):
    """Two members each wrong on a different half of val: their mean is right everywhere and wins on val; the
    third (worst) is not a member. `predict --model best` then runs both members, each at its own size."""
    raw = raw_spec(2, {"small": 32, "large": 40, "weak": 32})
    sweep = parse_sweep(raw)
    first, second = halves(VAL)
    t_first, t_second = halves(TEST)
    models = {n: tiny_model_bytes(tmp_path / f"{n}.keras", size, seed, n)
              for n, size, seed in (("small", 32, 1), ("large", 40, 2), ("weak", 32, 3))}
    write_variant(store, sweep, "small", first, t_first, models["small"])
    write_variant(store, sweep, "large", second, t_second, models["large"])
    write_variant(store, sweep, "weak", first | (np.arange(VAL) % 3 == 0), t_first, models["weak"])
    keep_validation_photos(store)

    summary, board = aggregate(store, sweep)
    rows = board.set_index("variant")
    assert rows.loc["ensemble-top2", "kind"] == "ensemble"
    assert rows.loc["ensemble-top2", "layers"] in ("mean of large, small", "mean of small, large")  # not weak
    assert rows.loc["ensemble-top2", "val_accuracy"] == 1.0 and rows.loc["small", "val_accuracy"] == 0.5
    assert rows.loc["ensemble-top2", "rank"] == 1 and summary["best"]["variant"] == "ensemble-top2"
    # its stored files are those of a variant: metrics from the mean probabilities, a model, _SUCCESS
    prefix = "sweeps/ens/ensembles/ensemble-top2"
    metrics = store.get_json(join(prefix, "metrics.json"))
    assert metrics["test_accuracy"] == 1.0 and set(metrics["members"]) == {"small", "large"}
    assert store.is_complete(prefix) is not None
    card = store.get_json("sweeps/ens/best/model_card.json")
    assert card["kind"] == "ensemble" and card["image_size"] == [32, 40] and set(card["config"]["ensemble"]) == {
        "small", "large"}
    assert "agreement" in summary["robustness"]["variants"]["ensemble-top2"]  # measured like any row

    # predict --model best: the mean of each member on the photo preprocessed at the member's own size
    photo = tmp_path / "photo.jpg"
    pixels = np.random.default_rng(5).integers(0, 255, (50, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo, quality=90)
    spec_file = tmp_path / "ens.yaml"
    spec_file.write_text(yaml.safe_dump({**raw, "store": store.uri}))
    run = aquarium("predict", "--model", "best", "--config", spec_file, "--no-trim-borders", photo)
    assert run.returncode == 0, run.stderr
    assert "32+40 px" in run.stderr
    got = np.array([float(x) for x in list(csv.reader(io.StringIO(run.stdout)))[1][2:]])
    np.testing.assert_allclose(got, (member_answer(tmp_path / "small.keras", photo, 32)
                                     + member_answer(tmp_path / "large.keras", photo, 40)) / 2, atol=2e-6)

    # `aquarium report` shows the same row without writing anything
    report = aquarium("report", "--config", spec_file)
    assert report.returncode == 0 and "ensemble-top2" in report.stdout and "best: ensemble-top2" in report.stdout
    small_row = next(line for line in report.stdout.splitlines() if " small " in line)
    patience = sweep.variant("small").lr_patience  # a whole number, even in a column beside the ensemble's gap
    assert f" {patience} " in small_row and f" {patience}.000 " not in small_row


def keep_validation_photos(store: FileStore) -> None:
    """What `prepare` keeps for the robustness measurement: labels.csv and the original validation JPEGs."""
    rows = ["filename,label,split"]
    for i in range(3):
        label, buf = CLASSES[i], io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
        store.put_bytes(f"data/images/valid/{label}/v{i}.jpg", buf.getvalue())
        rows.append(f"v{i}.jpg,{label},valid")
    store.put_text("data/labels.csv", "\n".join(rows) + "\n")


def member_answer(model_path: Path, photo: Path, size: int) -> np.ndarray:
    import keras
    import tensorflow as tf

    from common.pipeline import decode_pad_resize

    model = keras.models.load_model(model_path, compile=False)
    x = tf.cast(decode_pad_resize(tf.constant(photo.read_bytes()), size), tf.float32)[None]
    return np.asarray(model(x))[0]


def test_misaligned_members_make_a_failed_row_not_a_failed_aggregate(store, tmp_path):
    sweep = spec(3, {"a": 32, "b": 32})
    first, second = halves(VAL)
    t_first, _ = halves(TEST)
    model = tiny_model_bytes(tmp_path / "m.keras", 32)
    write_variant(store, sweep, "a", first, t_first, model)
    write_variant(store, sweep, "b", second, t_first, model)
    table = store.get_text("sweeps/ens/variants/b/predictions.csv").replace("v3.jpg", "other.jpg")
    store.put_text("sweeps/ens/variants/b/predictions.csv", table)
    row = ensemble_row(store, sweep, collect(store, sweep), write=False)
    assert row.name == "ensemble-top2" and row.state == "failed"
    assert "ensemble: b's predictions do not line up with a's" in row.error
    summary, board = aggregate(store, sweep)
    assert summary["best"]["variant"] in ("a", "b")
    assert board.set_index("variant").loc["ensemble-top2", "state"] == "failed"
    assert store.is_complete("sweeps/ens/ensembles/ensemble-top2") is None


def test_a_member_model_that_cannot_be_loaded_fails_the_row_not_the_aggregate(store, tmp_path):
    sweep = spec(2, {"a": 32, "b": 32})
    first, second = halves(VAL)
    write_variant(store, sweep, "a", first, first[:TEST], tiny_model_bytes(tmp_path / "m.keras", 32))
    write_variant(store, sweep, "b", second, first[:TEST], b"not a zip")
    summary, board = aggregate(store, sweep)
    row = board.set_index("variant").loc["ensemble-top2"]
    assert row["state"] == "failed" and "ensemble: b's model" in row["error"] and "cannot be loaded" in row["error"]
    assert summary["best"]["variant"] in ("a", "b")


def test_no_ensemble_row_when_off_or_fewer_than_two_finished(store, tmp_path):
    first, second = halves(VAL)
    model = tiny_model_bytes(tmp_path / "m.keras", 32)
    off = spec(0, {"a": 32, "b": 32})
    write_variant(store, off, "a", first, first[:TEST], model)
    write_variant(store, off, "b", second, first[:TEST], model)
    assert ensemble_row(store, off, collect(store, off), write=False) is None
    one = spec(3, {"a": 32, "c": 32})  # c never ran
    assert ensemble_row(store, one, collect(store, one), write=False) is None
