"""The whole smoke sweep on one machine against a real S3 server: prepare, real training, aggregate; rerun.

The spec is smoke.yaml plus one variant that fails at start (its weights file does not exist), so the same run
also shows that a failing variant neither stops the others nor the report.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pandas as pd
import yaml
from helpers import ROOT, aquarium

from common.config import load_sweep
from common.store import join, open_store

BAD = {"name": "bad", "kind": "finetune", "image_size": 64, "weights": "/nonexistent/w.weights.h5", "epochs": 1}


def sweep_run(config: Path, zip_path: Path, store: str, cwd: Path) -> subprocess.CompletedProcess:
    return aquarium("sweep", "run", "--config", config, "--executor", "local", "--source", zip_path,
                    "--store", store, cwd=cwd, timeout=840)


def snapshot(store, sweep, names) -> dict:
    """What a rerun must not touch: every finished variant's _SUCCESS, status.json and model."""
    return {(n, f): store.get_bytes(join(sweep.variant_prefix(n), f))
            for n in names for f in ("_SUCCESS", "status.json", "model.keras", "metrics.json")}


def test_smoke_sweep_end_to_end_and_rerun_skips(s3_env, dataset_zip, tmp_path):
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["variants"].append(BAD)
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(raw))
    sweep = load_sweep(config)
    good = [n for n in sweep.names if n != "bad"]

    first = sweep_run(config, dataset_zip, s3_env, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "variant failed: bad (exit 2)" in first.stdout
    for name in good:
        assert f"{name}: started" in first.stdout
    assert (tmp_path / "logs" / "smoke" / "cnn-a.log").stat().st_size > 0  # per-variant local log
    assert "weights file" in (tmp_path / "logs" / "smoke" / "bad.log").read_text()

    store = open_store(s3_env)
    report = join(sweep.prefix, "report")
    board = pd.read_csv(io.BytesIO(store.get_bytes(join(report, "leaderboard.csv"))))
    assert sorted(board["variant"]) == sorted(sweep.names)
    assert board.set_index("variant").loc["bad", "state"] == "failed"
    assert set(board.set_index("variant").loc[good, "state"]) == {"succeeded"}

    metrics = {n: store.get_json(join(sweep.variant_prefix(n), "metrics.json")) for n in good}
    expected = min(good, key=lambda n: (-metrics[n]["val_accuracy"], metrics[n]["val_loss"], n))
    assert store.get_json(join(report, "report.json"))["best"]["variant"] == expected
    assert store.get_json(join(sweep.prefix, "best", "model_card.json"))["variant"] == expected
    assert store.get_bytes(join(sweep.prefix, "best", "model.keras")) == \
        store.get_bytes(join(sweep.variant_prefix(expected), "model.keras"))
    assert store.is_complete(join(sweep.prefix, "best")) is not None

    files = {k.rsplit("/", 1)[1] for k in store.list(report)}
    wanted = {"report.html", "report.md", "leaderboard.csv", "report.json", "_SUCCESS", "accuracy.png",
              "best_per_class.png"}
    wanted |= {f"confusion_{n}_{s}.png" for n in good for s in ("test", "val")} | {f"curves_{n}.png" for n in good}
    assert wanted <= files
    # robustness to the frame, measured on the kept validation photos, beside validation accuracy
    measured = board.set_index("variant").loc[good, ["robustness", "robustness_trimmed"]]
    assert measured.notna().all().all() and ((measured >= 0) & (measured <= 1)).all().all()
    page = store.get_text(join(report, "report.html"))
    table = page.split('<table id="robustness">')[1].split("</table>")[0]
    assert "letterbox-white" in table and "border-black" in table and "mirror" in table

    before = snapshot(store, sweep, good)
    second = sweep_run(config, dataset_zip, s3_env, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for name in good:
        assert f"{name}: skipped (already finished with config {sweep.variant(name).config_hash})" in second.stdout
        assert f"{name}: started" not in second.stdout
    assert snapshot(store, sweep, good) == before  # nothing retrained, nothing rewritten
    assert store.get_json(join(report, "report.json"))["best"]["variant"] == expected
