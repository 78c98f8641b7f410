"""`trainable_layers` against the real backbone: more layers than MobileNetV3Large or Small has is exit 2 before any
training; `all` trains every layer on purpose (issue 11, item 3)."""

from __future__ import annotations

import keras
import pytest
import yaml
from helpers import ROOT, aquarium

from common.config import load_sweep, parse_sweep
from common.store import FileStore


def spec_with(tmp_path, trainable_layers, backbone="small"):
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["variants"][2].update(trainable_layers=trainable_layers, backbone=backbone)  # mnv3
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("backbone, name, total", [("large", "MobileNetV3Large", 188),
                                                   ("small", "MobileNetV3Small", 158)])
def test_more_trainable_layers_than_the_backbone_is_refused_before_training(tmp_path, backbone, name, total):
    config = spec_with(tmp_path, 500, backbone)
    store = tmp_path / "store"
    run = aquarium("finetune-variant", "--config", config, "--variant", "mnv3", "--store", store)
    assert run.returncode == 2, run.stderr[-2000:]
    line = [x for x in run.stderr.splitlines() if x.startswith("error: ")][-1]
    assert line == (f"error: variant mnv3: trainable_layers 500 is more than the {total} layers of {name}: "
                    f"give at most {total}, or `all` to train every layer")
    sweep = load_sweep(config)
    status = FileStore(str(store)).get_json(f"{sweep.variant_prefix('mnv3')}/status.json")
    assert status["phase"] == "failed" and status["epoch"] == 0 and status["exit_code"] == 2
    assert not (store / sweep.variant_prefix("mnv3") / "checkpoint").exists()  # nothing trained


def test_all_trains_every_backbone_layer():
    from common.models import build_finetune

    raw = {"name": "s", "dataset": {"source": "x.zip"},
           "variants": [{"name": "m", "kind": "finetune", "image_size": 32, "trainable_layers": "all"}]}
    variant = parse_sweep(raw).variants[0]
    assert variant.trainable_layers == "all"
    backbone = build_finetune(variant, 7, None).layers[1]
    batch_norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(backbone.layers) == 188 and len(batch_norms) > 30
    assert all(layer.trainable != (layer in batch_norms) for layer in backbone.layers)  # BN stays frozen
    raw["variants"][0]["trainable_layers"] = 188  # the whole backbone by number is accepted too
    assert parse_sweep(raw).variants[0].trainable_layers == 188
