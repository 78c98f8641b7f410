"""Both cores of one machine: variants one at a time with every thread, or side by side with fewer threads each.

    AQUARIUM_ZIP=../shared/datasets/aquarium-tfcsv.zip .venv/bin/python bench/bench_parallel.py \
        [--variants cnn-d,cnn-e] [--epochs 3] [--rounds 2]

Each mode runs the same `aquarium train-variant` processes a sweep runs (start-up, training, evaluation, upload
included) on a prepared file store, with `TF_NUM_INTRAOP_THREADS` as the executor would set it:
  seq-Nt   one variant at a time, N = all cores
  par-1t   all variants at once, cores / variants threads each (what the executor gives `--max-parallel` = variants)
  par-Nt   all variants at once, every one with all cores (oversubscribed)
Modes interleaved, order reversed every other round; wall seconds per mode, median over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.data.prepare import Options, prepare  # noqa: E402


def spec_file(tmp: Path, names: list[str], epochs: int) -> Path:
    """sweep.yaml with only `names`, each capped at `epochs` epochs (no early stop in so few)."""
    raw = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    raw["variants"] = [dict(v, epochs=epochs) for v in raw["variants"] if v["name"] in names]
    path = tmp / "bench-parallel.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start(config: Path, name: str, store: str, threads: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3"}
    argv = [sys.executable, "-m", "jobs.cli", "train-variant", "--config", str(config), "--variant", name,
            "--store", store, "--force"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def run_mode(mode: str, config: Path, names: list[str], store: str, tmp: Path) -> float:
    """Wall seconds of training every variant in this mode; a failed process stops the benchmark."""
    cores = os.cpu_count() or 1
    t = time.perf_counter()
    if mode.startswith("seq"):
        procs = []
        for n in names:
            procs.append(start(config, n, store, cores, tmp / f"{mode}-{n}.log"))
            procs[-1].wait()
    else:
        threads = max(1, cores // len(names)) if mode == "par-1t" else cores
        procs = [start(config, n, store, threads, tmp / f"{mode}-{n}.log") for n in names]
        for p in procs:
            p.wait()
    if any(p.returncode for p in procs):
        sys.exit(f"bench_parallel: a variant failed in mode {mode}; see {tmp}")
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="cnn-d,cnn-e")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    zip_path = Path(os.environ.get("AQUARIUM_ZIP") or ROOT.parent / "shared" / "datasets" / "aquarium-tfcsv.zip")
    names = args.variants.split(",")
    cores = os.cpu_count() or 1
    modes = [f"seq-{cores}t", "par-1t", f"par-{cores}t"]
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    walls = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        tmp = Path(tmp)
        store = (tmp / "store").as_uri()
        prepare(Options(source=str(zip_path), store=store, sizes=(64,)), log=lambda m: None)
        config = spec_file(tmp, names, args.epochs)
        for r in range(args.rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                walls[mode].append(run_mode(mode, config, names, store, tmp))
                print(f"  round {r + 1} {mode:7} {walls[mode][-1]:.1f}s  load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{', '.join(names)} x {args.epochs} epochs as train-variant processes, {cores} cores, "
          f"{args.rounds} rounds, load before {load_before}, after {' '.join(f'{x:.1f}' for x in os.getloadavg())},"
          f" {time.strftime('%Y-%m-%d %H:%M %Z')}")
    base = statistics.median(walls[modes[0]])
    print(f"| mode | median wall s | speed-up vs {modes[0]} |\n|---|---:|---:|")
    for m in modes:
        print(f"| {m} | {statistics.median(walls[m]):.1f} | {base / statistics.median(walls[m]):.2f}x |")


if __name__ == "__main__":
    main()
