"""The sweep on one machine, before and after issue 14: the seven CNN variants of `sweep.yaml` (today's epochs
and early stopping), run with `aquarium sweep run` from empty stores -- the old code with its settings against
this checkout with its new defaults -- interleaved in one run.

    AQUARIUM_ZIP=../shared/datasets/aquarium-tfcsv.zip .venv/bin/python bench/bench_sweep.py [--old-ref REF]
        [--rounds 1] [--epochs N] [--variants a,b]     # --epochs/--variants: a shortened check only

"old" is `git worktree` of `--old-ref` (default: the commit before issue 14) run by this interpreter, so the
same packages run both; "new" is this checkout. Both get the same spec (a copy of sweep.yaml without the
MobileNetV3 rows, store in a fresh temp folder) and the same zip, and prepare their own store (its time is
in the wall time, as in `make sweep`). Printed for each run: wall time, the epochs each variant trained, and the
validation accuracy of the variant chosen on validation (ties: lower val loss, then name -- the report's rule);
last `sweep speed-up: X.XXx (old Ns, new Ns), val-selected accuracy old A / new B` (medians over rounds).
Takes about 40 minutes of both cores at full length: run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
OLD_REF = "4d4c30a"  # main just before issue 14 (augmentation in tf.data, float32, one variant at a time)


def spec_file(tmp: Path, epochs: int | None, names: list[str] | None) -> Path:
    """sweep.yaml's CNN variants (optionally fewer, or capped at `epochs`), stored under tmp."""
    raw = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    keep = [v for v in raw["variants"] if v.get("kind", "cnn") == "cnn" and (not names or v["name"] in names)]
    raw["variants"] = [dict(v, epochs=epochs) if epochs else v for v in keep]
    if epochs:
        raw["defaults"]["epochs"] = epochs
    path = tmp / "bench-sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def old_checkout(tmp: Path, ref: str) -> Path:
    """A detached worktree of the old code (removed again at the end)."""
    path = tmp / "old"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=ROOT, check=True,
                   capture_output=True)
    return path


def run_sweep(code: Path, config: Path, store: Path, zip_path: Path, log: Path) -> float:
    """`aquarium sweep run` of `code` into an empty store; wall seconds. A failed sweep stops the benchmark."""
    argv = [sys.executable, "-m", "jobs.cli", "sweep", "run", "--config", str(config), "--source", str(zip_path),
            "--store", store.as_uri()]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_NUM_INTRAOP_THREADS")}
    t = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(argv, cwd=code, env={**env, "PYTHONPATH": str(code)}, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode:
        sys.exit(f"bench_sweep: the sweep of {code} exited {done.returncode}; see {log}")
    return time.perf_counter() - t


def outcome(store: Path, sweep_name: str) -> tuple[dict[str, int], str, float]:
    """(epochs trained per variant, the val-selected variant, its val accuracy) from every metrics.json."""
    metrics = {p.parent.name: json.loads(p.read_text())
               for p in (store / "sweeps" / sweep_name / "variants").glob("*/metrics.json")}
    best = min(metrics, key=lambda n: (-metrics[n]["val_accuracy"], metrics[n]["val_loss"], n))
    return {n: m["epochs_run"] for n, m in sorted(metrics.items())}, best, metrics[best]["val_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-ref", default=OLD_REF)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="cap every variant's epochs (a quick check)")
    parser.add_argument("--variants", default=None, help="comma-separated subset (a quick check)")
    args = parser.parse_args()
    zip_path = Path(os.environ.get("AQUARIUM_ZIP") or ROOT.parent / "shared" / "datasets" / "aquarium-tfcsv.zip")
    if not zip_path.is_file():
        sys.exit(f"bench_sweep: dataset zip {zip_path} not found: set AQUARIUM_ZIP")
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    walls, accuracy = {"old": [], "new": []}, {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        config = spec_file(tmp, args.epochs, args.variants.split(",") if args.variants else None)
        sweep_name = yaml.safe_load(config.read_text())["name"]
        code = {"old": old_checkout(tmp, args.old_ref), "new": ROOT}
        try:
            for r in range(args.rounds):
                for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    store = tmp / f"store-{which}-{r}"
                    wall = run_sweep(code[which], config, store, zip_path, tmp / f"{which}-{r}.log")
                    epochs, best, acc = outcome(store, sweep_name)
                    walls[which].append(wall)
                    accuracy[which].append(acc)
                    print(f"  round {r + 1} {which}: wall {wall:.0f}s, epochs "
                          + ", ".join(f"{n} {e}" for n, e in epochs.items())
                          + f"; val-selected {best} val accuracy {acc:.4f}; load {os.getloadavg()[0]:.1f}",
                          flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(code["old"])], cwd=ROOT, capture_output=True)
    old, new = statistics.median(walls["old"]), statistics.median(walls["new"])
    print(f"\nold = {args.old_ref}, new = this checkout; nproc {os.cpu_count()}, load average before {load_before}, "
          f"after {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"sweep speed-up: {old / new:.2f}x (old {old:.0f}s, new {new:.0f}s), val-selected accuracy "
          f"old {statistics.median(accuracy['old']):.4f} / new {statistics.median(accuracy['new']):.4f}")


if __name__ == "__main__":
    main()
