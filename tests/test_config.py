"""The sweep spec: shipped specs are valid; every bad spec gets one clear line and exit code 2."""

from __future__ import annotations

import pytest
import yaml
from helpers import ROOT, aquarium

from common.config import load_sweep, parse_sweep
from common.errors import BadInput

BASE = {"name": "s", "dataset": {"source": "x.zip"}, "variants": [{"name": "cnn-a"}]}


def with_(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw.update(changes)
    return raw


def test_shipped_specs_have_the_seed_variants():
    sweep = load_sweep(ROOT / "sweep.yaml")
    cnn = [v for v in sweep.variants if v.kind == "cnn"]
    seed_table = [(v.conv_layers, v.lr_factor, v.lr_patience) for v in cnn[:3]]
    assert seed_table == [(4, 0.2, 5), (3, 0.1, 3), (5, 0.3, 8)]
    assert {v.image_size for v in cnn} == {64}
    fine = [v for v in sweep.variants if v.kind == "finetune"]
    assert [(v.backbone, v.lr_patience) for v in fine[:3]] == [("large", 8), ("large", 4), ("large", 2)]
    assert all(v.image_size == 224 and v.trainable_layers == 20 for v in fine[:3])
    # issue 19: the report's three recipes on MobileNetV3Small too, with the ImageNet weights
    small = [v for v in sweep.variants if v.kind == "finetune" and v.backbone == "small"]
    assert [v.lr_patience for v in small[:3]] == [8, 4, 2] and all(v.weights == "imagenet" for v in small)
    # issue 22: a search over mnv3s-d's recipe at its 224 px (prepare writes a search's sizes too: test_search.py)
    assert [s.base.get("extends") for s in sweep.searches] == ["mnv3s-d"]
    assert sweep.image_sizes == [64, 224, 256]
    # issue 13: every variant frame-robust and flip-averaged; the top-3 ensemble row
    assert all(v.augment.frame and v.augment.border and v.test_time_flip for v in sweep.variants)
    assert sweep.ensemble_top_k == 3
    assert load_sweep(ROOT / "smoke.yaml").variants


def test_defaults_merge_deeply_and_hash_follows_the_config():
    raw = with_(defaults={"epochs": 7, "augment": {"zoom": 0.2}},
                variants=[{"name": "a"}, {"name": "b", "augment": {"flip": False}}])
    a, b = parse_sweep(raw).variants
    assert a.epochs == b.epochs == 7 and b.augment.zoom == 0.2 and b.augment.flip is False
    again = parse_sweep(raw).variants[0]
    assert a.config_hash == again.config_hash
    raw["defaults"]["epochs"] = 8
    assert parse_sweep(raw).variants[0].config_hash != a.config_hash
    explicit = with_(variants=[{"name": "a", "augment": {"mixup": 0.0}, "image_size": 64}])
    assert parse_sweep(explicit).variants[0].config_hash == parse_sweep(with_(variants=[{"name": "a"}])).variants[
        0].config_hash  # spelling out a default (or a new optional key) does not make finished results stale


@pytest.mark.parametrize("raw, message", [
    (with_(variants=[{"name": "cnn-a", "kernal_size": 3}]), "unknown key 'kernal_size' at variants[0] 'cnn-a'"),
    (with_(defaults={"epoch": 3}), "unknown key 'epoch' at defaults.epoch"),
    (with_(surprise=1), "unknown key 'surprise'"),
    (with_(variants=[{"name": "cnn-a", "kernel_size": "big"}]), "variants[0] 'cnn-a'.kernel_size"),
    (with_(variants=[{"name": "a"}, {"name": "a"}]), "duplicate variant names: a"),
    (with_(variants=[{"name": "CNN_A"}]), "not a valid Kubernetes name"),
    (with_(variants=[{"name": "a", "conv_layers": 2}]), "conv_layers"),
    (with_(variants=[{"name": "a", "conv_layers": 4, "filters": [8, 8]}]), "filters has 2 entries"),
    (with_(variants=[{"name": "a", "kind": "rnn"}]), "variants[0] 'a'.kind"),
    (with_(variants=[]), "at least one variant"),
    ({"name": "s"}, "dataset"),
])
def test_bad_specs_name_the_problem(raw, message):
    with pytest.raises(BadInput) as err:
        parse_sweep(raw, "sweep.yaml")
    assert message in str(err.value)
    assert "\n" not in str(err.value) and str(err.value).startswith("sweep.yaml")


def test_bad_spec_on_the_command_line_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_(variants=[{"name": "cnn-a", "kernal_size": 3}])))
    done = aquarium("train-variant", "--config", path, "--variant", "cnn-a")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {path}: unknown key 'kernal_size' at variants[0] "
                                                f"'cnn-a'.kernal_size: remove it or check its spelling"]
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    done = aquarium("train-variant", "--config", broken, "--variant", "x")
    assert done.returncode == 2 and "not valid YAML" in done.stderr


def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path):
    spec = tmp_path / "dup.yaml"
    spec.write_text("name: s\ndataset: {source: x.zip}\nvariants:\n  - name: cnn-a\n    epochs: 3\n"
                    "  - name: cnn-b\n    epochs: 5\n    kernel_size: 3\n    epochs: 9\n")
    with pytest.raises(BadInput) as err:
        load_sweep(spec)
    assert str(err.value) == (f"{spec}: duplicate key 'epochs' at variants[1].epochs (lines 7 and 9): a key may "
                              "appear once; keep the one you mean")
    spec.write_text("name: s\nname: t\ndataset: {source: x.zip}\nvariants: [{name: a}]\n")
    run = aquarium("sweep", "status", "--config", spec)
    assert run.returncode == 2 and "duplicate key 'name' at name (lines 1 and 2)" in run.stderr, run.stderr


def test_duplicate_variant_names_are_one_short_line(tmp_path):
    variants = [{"name": "cnn-a", "epochs": 3}, {"name": "cnn-b"}, {"name": "cnn-a", "kind": "finetune"}]
    spec = tmp_path / "dup.yaml"
    spec.write_text(yaml.safe_dump(with_(variants=variants)))
    run = aquarium("sweep", "status", "--config", spec)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0] == f"error: {spec}: variants: duplicate variant names: cnn-a" and len(lines[0]) < 200
