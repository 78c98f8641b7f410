"""The benchmarks run, in their seconds-long `--quick` mode, on the generated dataset: a benchmark that no longer
runs is found here, not when someone needs its figures (the figures themselves are in bench/RESULTS.md)."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import ROOT


def bench(name: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / name), "--quick", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)


def test_bench_scale_quick_prints_its_summary_line(dataset_zip):
    done = bench("bench_scale.py", "--zip", dataset_zip)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("scale: prepare 0.04k peak ") and "train-64 0.04k peak" in last
    assert "sharded          prepare:" in done.stdout and "train-64 streamed" in done.stdout


def test_bench_input_quick_prints_both_tables(dataset_zip):
    done = bench("bench_input.py", "--zip", dataset_zip)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "| ours (issue 14): uint8 batches, augmentation in the train step | 224 |" in done.stdout
    assert "train step incl. augmentation" in done.stdout


def test_bench_search_quick_compares_halving_with_the_same_trials_trained_to_the_end(dataset_zip):
    done = bench("bench_search.py", "--zip", dataset_zip)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    halving, full = map(int, last.removeprefix("search: ").split(" ")[0].split("/"))
    assert full == 4 * 3 and 4 <= halving <= full  # 4 trials of 3 epochs; each trial trains at least its first
    assert "quick halving" in done.stdout and "same trials, full" in done.stdout
    # the replay: both methods, min_epochs 1 and 2 (below the 3 epochs), reduction 2-4; every trial trains its first
    # epoch, none more than all of them; something finishes
    replayed = [line.split() for line in done.stdout.splitlines() if line.startswith(("successive_halving ",
                                                                                     "hyperband "))]
    assert sorted((r[0], r[1], r[2]) for r in replayed) == sorted(
        (method, m, eta) for method in ("hyperband", "successive_halving") for m in "12" for eta in "234")
    for r in replayed:
        epochs = int(r[-5])
        assert 4 <= epochs <= 12 and int(r[-3]) >= 1, r
