"""aggregate/report: leaderboard, best-by-validation selection, unfinished variants, report files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from artefacts import png_size, sweep_spec, tiny_model_bytes, write_variant
from helpers import aquarium
from common.report import CHOSEN_BY, NoFinishedVariants, aggregate, choose_best, collect, leaderboard
from common.robustness import COPIES, NOT_MEASURED
from common.store import FileStore, join



@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    return tiny_model_bytes(tmp_path_factory.mktemp("model") / "model.keras")


@pytest.fixture
def store(tmp_path) -> FileStore:
    return FileStore(str(tmp_path / "store"))


def test_best_is_chosen_on_validation_never_test(store, model_bytes):
    sweep = sweep_spec([("val-best", "cnn"), ("test-best", "cnn"), ("weak", "finetune")])
    write_variant(store, sweep, "val-best", val_acc=0.80, val_loss=0.9, test_acc=0.60, model=model_bytes)
    write_variant(store, sweep, "test-best", val_acc=0.70, val_loss=0.5, test_acc=0.95, model=model_bytes)
    write_variant(store, sweep, "weak", val_acc=0.40, val_loss=1.5, test_acc=0.41, model=model_bytes)
    results = collect(store, sweep)
    assert choose_best(results).name == "val-best"
    board = leaderboard(results)
    assert board["variant"].tolist() == ["val-best", "test-best", "weak"]
    assert board["rank"].tolist() == [1, 2, 3]
    assert board.loc[0, "test_accuracy"] == pytest.approx(0.60)
    assert board.loc[2, "layers"] == "MobileNetV3L/7 trainable"
    assert board.loc[0, "layers"] == "3"


def test_val_accuracy_tie_goes_to_lower_val_loss_then_name(store, model_bytes):
    sweep = sweep_spec([("b-high-loss", "cnn"), ("c-low-loss", "cnn"), ("a-low-loss", "cnn")])
    write_variant(store, sweep, "b-high-loss", val_acc=0.75, val_loss=0.70, test_acc=0.9, model=model_bytes)
    write_variant(store, sweep, "c-low-loss", val_acc=0.75, val_loss=0.40, test_acc=0.5, model=model_bytes)
    assert choose_best(collect(store, sweep)).name == "c-low-loss"
    write_variant(store, sweep, "a-low-loss", val_acc=0.75, val_loss=0.40, test_acc=0.1, model=model_bytes)
    results = collect(store, sweep)
    assert choose_best(results).name == "a-low-loss"
    assert leaderboard(results)["variant"].tolist() == ["a-low-loss", "c-low-loss", "b-high-loss"]


def test_unfinished_variants_are_listed_with_state_and_error(store, model_bytes):
    sweep = sweep_spec([("ok", "cnn"), ("broken", "cnn"), ("never", "cnn"), ("old", "cnn"), ("busy", "cnn")])
    write_variant(store, sweep, "ok", model=model_bytes)
    write_variant(store, sweep, "broken", phase="failed", error="BadInput: out of memory", finished=False)
    write_variant(store, sweep, "old", model=model_bytes, success_hash="0123456789ab")
    write_variant(store, sweep, "busy", phase="running", finished=False)
    board = leaderboard(collect(store, sweep)).set_index("variant")
    assert len(board) == 5
    assert board["state"].to_dict() == {"ok": "succeeded", "broken": "failed", "never": "missing",
                                        "old": "stale", "busy": "running"}
    assert "out of memory" in board.loc["broken", "error"]
    assert "0123456789ab" in board.loc["old", "error"]
    assert pd.isna(board.loc["old", "val_accuracy"])  # a stale result's metrics are not compared
    assert pd.isna(board.loc["broken", "rank"])
    assert choose_best(collect(store, sweep)).name == "ok"


def test_no_finished_variant_is_an_error(store):
    sweep = sweep_spec([("broken", "cnn"), ("never", "cnn")])
    write_variant(store, sweep, "broken", phase="failed", error="boom", finished=False)
    with pytest.raises(NoFinishedVariants, match=r"broken \(failed\), never \(missing\)") as err:
        aggregate(store, sweep)
    assert err.value.exit_code == 2
    assert store.list(join(sweep.prefix, "report")) == []
    assert store.is_complete(join(sweep.prefix, "best")) is None


def test_aggregate_writes_report_and_best(store, model_bytes):
    sweep = sweep_spec([("cnn-a", "cnn"), ("cnn-b", "cnn"), ("mnv3", "finetune"), ("dead", "cnn")])
    write_variant(store, sweep, "cnn-a", val_acc=0.6, test_acc=0.7, model=b"another model")
    write_variant(store, sweep, "cnn-b", val_acc=0.9, test_acc=0.5, model=model_bytes)
    write_variant(store, sweep, "mnv3", val_acc=0.7, test_acc=0.8, model=b"a third model")
    write_variant(store, sweep, "dead", phase="failed", error="killed", finished=False)
    summary, board = aggregate(store, sweep)
    assert summary["best"]["variant"] == "cnn-b"
    assert [m["variant"] for m in summary["not_finished"]] == ["dead"]

    report = join(sweep.prefix, "report")
    names = {k.rsplit("/", 1)[1] for k in store.list(report)}
    expected = {"report.html", "report.md", "leaderboard.csv", "report.json", "_SUCCESS", "accuracy.png",
                "best_per_class.png"}
    expected |= {f"confusion_{v}_{s}.png" for v in ("cnn-a", "cnn-b", "mnv3") for s in ("test", "val")}
    expected |= {f"curves_{v}.png" for v in ("cnn-a", "cnn-b", "mnv3", "dead")}
    assert names == expected
    for name in names - {"_SUCCESS", "report.html", "report.md", "leaderboard.csv", "report.json"}:
        width, height = png_size(store.get_bytes(join(report, name)))
        assert width > 300 and height > 100, name
    files = [store.root / k for k in store.list(report)]
    assert max(files, key=lambda p: p.stat().st_mtime_ns).name == "_SUCCESS"  # written last

    csv = pd.read_csv(io.StringIO(store.get_text(join(report, "leaderboard.csv"))))
    assert csv["variant"].tolist() == ["cnn-b", "mnv3", "cnn-a", "dead"]
    assert csv.set_index("variant").loc["dead", "state"] == "failed"
    page = store.get_text(join(report, "report.html"))
    assert page.count("<tr class=") == 4 and 'data-variant="dead"' in page and "killed" in page
    assert "| cnn-b |" in store.get_text(join(report, "report.md"))
    assert json.loads(store.get_text(join(report, "report.json")))["chosen_by"] == CHOSEN_BY
    assert NOT_MEASURED in page and csv["robustness"].isna().all()  # no dataset in this store: nothing to measure

    best = join(sweep.prefix, "best")
    assert store.get_bytes(join(best, "model.keras")) == model_bytes
    card = store.get_json(join(best, "model_card.json"))
    assert card["variant"] == "cnn-b" and card["chosen_by"] == CHOSEN_BY
    assert card["dataset_fingerprint"] == "fp-123" and card["config_hash"] == sweep.variant("cnn-b").config_hash
    assert card["metrics"]["val_accuracy"] == 0.9 and len(card["classes"]) == 7
    assert store.is_complete(best)["variant"] == "cnn-b"


def _spec_file(tmp_path: Path, sweep, store: FileStore) -> Path:
    raw = {"name": sweep.name, "dataset": {"source": "x.zip"}, "store": store.uri,
           "variants": [v.model_dump(exclude={"resources"}) for v in sweep.variants]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_aggregate_and_report_commands(tmp_path, store, model_bytes):
    sweep = sweep_spec([("cnn-a", "cnn"), ("cnn-b", "cnn")])
    spec = _spec_file(tmp_path, sweep, store)
    none = aquarium("aggregate", "--config", str(spec))
    assert none.returncode == 2
    assert "error: no finished variants to compare" in none.stderr

    write_variant(store, sweep, "cnn-a", val_acc=0.55, test_acc=0.61, model=model_bytes)
    write_variant(store, sweep, "cnn-b", phase="interrupted", error="SIGTERM", finished=False)
    done = aquarium("aggregate", "--config", str(spec))
    assert done.returncode == 0, done.stderr
    assert "best: cnn-a" in done.stdout
    assert "not finished: cnn-b (interrupted) SIGTERM" in done.stdout
    assert NOT_MEASURED in done.stdout

    shown = aquarium("report", "--config", str(spec), "--store", store.uri)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "variant", "kind"]
    assert lines[1].split()[:2] == ["1", "cnn-a"] and "0.550" in lines[1] and "0.610" in lines[1]
    assert "cnn-b" in lines[2] and "interrupted" in lines[2]


def write_valid_photos(store: FileStore, labels: list[str], images: bool = True) -> None:
    """A prepared dataset's labels.csv and, with `images`, its kept validation JPEGs (`images/valid/<class>/`)."""
    import numpy as np
    from PIL import Image

    rows = ["split,filename,label,score,boxes,sha256", "train,t.jpg,fish,1,1,x"]
    rng = np.random.default_rng(0)
    for k, label in enumerate(labels):
        rows.append(f"valid,v{k}.jpg,{label},1,1,x")
        if images:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(buf, format="JPEG")
            store.put_bytes(join("data", "images", "valid", label, f"v{k}.jpg"), buf.getvalue())
    store.put_text(join("data", "labels.csv"), "\n".join(rows) + "\n")


def test_robustness_column_and_per_copy_table(tmp_path, store, model_bytes):
    sweep = sweep_spec([("cnn-a", "cnn"), ("cnn-b", "cnn"), ("broken", "cnn")])
    write_variant(store, sweep, "cnn-a", val_acc=0.6, model=model_bytes)
    write_variant(store, sweep, "cnn-b", val_acc=0.9, model=model_bytes)
    write_variant(store, sweep, "broken", val_acc=0.7, model=b"not a model")
    report = join(sweep.prefix, "report")
    # a store prepared before the validation photos were kept: the note, and aggregate still succeeds
    write_valid_photos(store, ["fish", "shark", "fish"], images=False)
    old = aquarium("aggregate", "--config", str(_spec_file(tmp_path, sweep, store)))
    assert old.returncode == 0, old.stderr
    assert NOT_MEASURED in old.stdout and NOT_MEASURED in store.get_text(join(report, "report.md"))

    write_valid_photos(store, ["fish", "shark", "fish"])
    summary, board = aggregate(store, sweep)
    assert summary["best"]["variant"] == "cnn-b"  # selection stays on validation
    csv = pd.read_csv(io.StringIO(store.get_text(join(report, "leaderboard.csv")))).set_index("variant")
    for name in ("cnn-a", "cnn-b"):
        for column in ("robustness", "robustness_trimmed"):
            assert 0 <= csv.loc[name, column] <= 1
    assert pd.isna(csv.loc["broken", "robustness"])
    measured = json.loads(store.get_text(join(report, "report.json")))["robustness"]
    assert measured["note"] is None and set(measured["variants"]["cnn-b"]["copies"]) == set(COPIES)
    assert measured["variants"]["cnn-b"]["images"] == 3
    assert "not measured" in measured["variants"]["broken"]["error"]
    # the same model in both variants: the same figures
    assert measured["variants"]["cnn-a"]["copies"] == measured["variants"]["cnn-b"]["copies"]
    page = store.get_text(join(report, "report.html"))
    table = page.split('<table id="robustness">')[1].split("</table>")[0]
    assert all(f">{name}<" in table for name in COPIES) and "originals (3 validation photos)" in table
    assert "robustness of cnn-b: agreement" in page and "<th>robustness</th>" in page
    assert "| letterbox-white |" in store.get_text(join(report, "report.md"))


def test_a_rerun_of_aggregate_measures_only_new_models(tmp_path, store, model_bytes):
    """Each model's robustness is kept beside it, keyed to the model, the photos and the copies: a rerun after one
    more variant finished (a search's trials, a new row) reuses the others; a retrained model is measured again."""
    from common.robustness import MEASURED

    sweep = sweep_spec([("cnn-a", "cnn"), ("cnn-b", "cnn")])
    write_variant(store, sweep, "cnn-a", val_acc=0.6, model=model_bytes)
    write_variant(store, sweep, "cnn-b", val_acc=0.9, model=model_bytes)
    write_valid_photos(store, ["fish", "shark", "fish"])
    aggregate(store, sweep)
    kept = join(sweep.variant_prefix("cnn-a"), MEASURED)
    # mark the kept figure: a rerun that reuses it reports the mark, one that measured again would not
    record = store.get_json(kept)
    record["result"]["agreement"] = 0.123
    store.put_json(kept, record)
    summary, _ = aggregate(store, sweep)
    assert summary["robustness"]["variants"]["cnn-a"]["agreement"] == 0.123
    assert summary["robustness"]["variants"]["cnn-b"]["agreement"] != 0.123
    # the model trained again (a new _SUCCESS record): measured again
    store.mark_complete(sweep.variant_prefix("cnn-a"), {**store.is_complete(sweep.variant_prefix("cnn-a")),
                                                        "finished_at": "later"})
    summary, _ = aggregate(store, sweep)
    assert summary["robustness"]["variants"]["cnn-a"]["agreement"] != 0.123
    assert summary["robustness"]["variants"]["cnn-a"] == summary["robustness"]["variants"]["cnn-b"]
