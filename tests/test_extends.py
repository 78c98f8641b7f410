"""`extends:` in a variant: another variant's own keys merged under its own, chains followed, one error line for
an unknown name or a cycle -- and sweep.yaml, rewritten with it, resolves to exactly what it did before."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml
from helpers import ROOT, aquarium

from common.config import parse_sweep
from common.errors import BadInput

# Taken from sweep.yaml at 68f21c0, before its rows used extends: variant -> (config_hash, sha256 of the whole
# resolved variant that differs from the field defaults, resources included). A finished result stays current
# only while its config hash does.
SNAPSHOT = {
    "cnn-a": ("069cd594324f", "069cd594324f98ec"),
    "cnn-b": ("74c1d975798e", "74c1d975798e1286"),
    "cnn-c": ("1297fee6d15d", "1297fee6d15d0310"),
    "cnn-d": ("7b13ba0f442c", "7b13ba0f442ca500"),
    "cnn-e": ("2027d4613a3a", "2027d4613a3a4650"),
    "cnn-g": ("1855ff7bd167", "1855ff7bd167b94a"),
    "cnn-h": ("da5ca79d76eb", "da5ca79d76ebd7df"),
    "mnv3-a": ("1694714cf811", "1694714cf81139f2"),
    "mnv3-b": ("a12574586f07", "a12574586f072468"),
    "mnv3-c": ("f9650a316d5f", "f9650a316d5f47a3"),
}


def spec(*variants, defaults=None) -> dict:
    return {"name": "s", "dataset": {"source": "x.zip"}, "defaults": defaults or {}, "variants": list(variants)}


def resolved_digest(variant) -> str:
    data = variant.model_dump(exclude_defaults=True)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def test_sweep_yaml_resolves_to_the_snapshot():
    raw = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    assert any("extends" in v for v in raw["variants"])  # the rows below really go through extends
    sweep = parse_sweep(raw)
    got = {v.name: (v.config_hash, resolved_digest(v)) for v in sweep.variants if v.name in SNAPSHOT}
    assert {"cnn-a", "cnn-b", "cnn-c", "mnv3-a", "mnv3-b", "mnv3-c"} <= set(got)  # the seed's rows stay
    assert got == {name: SNAPSHOT[name] for name in got}  # cnn-d/e/g/h left the sweep in issue 19


def test_no_cnn_row_of_sweep_yaml_restates_more_than_four_keys_of_another():
    """The from-scratch rows say what differs; the fine-tune rows are outside this rewrite."""
    rows = [v for v in yaml.safe_load((ROOT / "sweep.yaml").read_text())["variants"] if v["name"].startswith("cnn-")]
    for a in rows:
        for b in rows:
            same = [k for k in a if k not in ("name", "extends") and a is not b and b.get(k) == a[k]]
            assert len(same) <= 4, (a["name"], b["name"], same)


def test_extends_merges_deeply_follows_chains_and_keeps_the_hash():
    base = {"name": "base", "epochs": 9, "augment": {"zoom": 0.2, "crop": 0.2}, "dropout": 0.4}
    written = spec(base, {"name": "mid", "epochs": 9, "augment": {"zoom": 0.2, "crop": 0.2, "mixup": 0.3},
                          "dropout": 0.4, "label_smoothing": 0.1},
                   {"name": "top", "epochs": 9, "augment": {"zoom": 0.3, "crop": 0.2, "mixup": 0.3}, "dropout": 0.4,
                    "label_smoothing": 0.1}, defaults={"augment": {"contrast": 0.1}, "epochs": 5})
    short = spec({"name": "top", "extends": "mid", "augment": {"zoom": 0.3}},  # before the row it extends
                 base, {"name": "mid", "extends": "base", "augment": {"mixup": 0.3}, "label_smoothing": 0.1},
                 defaults={"augment": {"contrast": 0.1}, "epochs": 5})
    full = {v.name: v for v in parse_sweep(written).variants}
    ext = {v.name: v for v in parse_sweep(short).variants}
    for name in full:
        assert ext[name].model_dump() == full[name].model_dump() and ext[name].config_hash == full[name].config_hash
    assert ext["top"].augment.contrast == 0.1 and ext["top"].augment.mixup == 0.3 and ext["top"].augment.zoom == 0.3


def test_the_extended_variants_name_is_never_inherited():
    sweep = parse_sweep(spec({"name": "a", "epochs": 3}, {"name": "b", "extends": "a"}))
    assert sweep.names == ["a", "b"] and sweep.variant("b").epochs == 3


@pytest.mark.parametrize("variants, message", [
    ([{"name": "a"}, {"name": "b", "extends": "nope"}],
     "sweep.yaml: variants[1] 'b'.extends: no variant named 'nope' in this spec: extend one of a"),
    ([{"name": "a", "extends": "a"}], "sweep.yaml: variants[0] 'a'.extends: a -> a is a cycle"),
    ([{"name": "a", "extends": "c"}, {"name": "b", "extends": "a"}, {"name": "c", "extends": "b"}],
     "sweep.yaml: variants[1] 'b'.extends: a -> c -> b -> a is a cycle"),  # the row that closes it
    ([{"name": "a"}, {"name": "b", "extends": ["a"]}], "sweep.yaml: variants[1] 'b'.extends: no variant named ['a'] in this spec"),
    ([{"extends": "a"}, {"name": "a"}], "sweep.yaml: variants[0] extends 'a' but has no name: give it one"),
])
def test_bad_extends_is_one_line_naming_the_place(variants, message):
    with pytest.raises(BadInput) as err:
        parse_sweep(spec(*variants), "sweep.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_extends_is_not_a_default_and_a_cycle_exits_2(tmp_path):
    with pytest.raises(BadInput, match="unknown key 'extends' at defaults.extends"):
        parse_sweep(spec({"name": "a"}, defaults={"extends": "a"}))
    path = tmp_path / "cycle.yaml"
    path.write_text(yaml.safe_dump(spec({"name": "a", "extends": "b"}, {"name": "b", "extends": "a"})))
    done = aquarium("sweep", "status", "--config", path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {path}: variants[1] 'b'.extends: a -> b -> a is a cycle: "
                                                "let one of them list its keys instead of extending"]
