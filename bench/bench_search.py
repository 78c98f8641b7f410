"""A search with early stopping against the same trials trained to the end (issue 22).

    AQUARIUM_ZIP=../shared/datasets/aquarium-tfcsv.zip .venv/bin/python bench/bench_search.py \
        [--config sweep.yaml] [--search NAME] [--keep DIR]
    .venv/bin/python bench/bench_search.py --quick --zip tests-data.zip     # a minute: tests/test_bench.py

1. "halving": `aquarium sweep run` of a spec holding only the search (`--search` of `--config`, default its first),
   with its early stopping (successive halving / Hyperband);
2. "full": the very trials that run asked -- their resolved configs, read back from its store -- as plain
   variants of a second sweep in the same store, so nothing stops them early but their own EarlyStopping.
   The prepared dataset is shared (prepare runs once).
Printed side by side: trials, trial-epochs (epochs trained, all trials together), wall time of the trials (first
start to last end, from their status.json: prepare left out; each run is stopped when its aggregate starts), best
validation accuracy and its trial; then the full side's measured curves replayed under other early stopping
(`replay`); last `search: ...` with the halving run's cost as a share of the full one. At full length (sweep.yaml's
search: 24 trials of 20 epochs at 224 px) it takes over an hour on 2 cores: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUICK = {  # about a minute on the generated dataset: a tiny CNN at 32 px; a learning rate that learns and one that
    # cannot, so the first rung (epoch 2) has something to stop
    "name": "quick", "base": {"filters": [8, 16, 16], "dense_units": 16}, "sampler": "grid", "seed": 0,
    "max_parallel": 2, "space": {"learning_rate": {"choice": [0.003, 1.0e-7]}, "dropout": {"choice": [0.1, 0.4]}},
    "early_stopping": {"method": "successive_halving", "min_epochs": 2, "reduction_factor": 2},
}
QUICK_DEFAULTS = {"image_size": 32, "epochs": 3, "batch_size": 8, "early_stopping_patience": 3,
                  "resources": {"gpu": 0, "cpu": "1", "memory": "2Gi"}}


def specs(raw: dict, search_name: str | None, quick: bool, zip_path: str) -> tuple[dict, dict]:
    """(the spec of the halving run, its search). The search's base is written out as variant keys, so the spec
    trains the trials and one cheap placeholder variant (a sweep needs one), nothing else."""
    from common.config import parse_sweep
    from common.search import base_keys

    if quick:
        raw = {"name": "quick", "dataset": {"source": zip_path}, "defaults": QUICK_DEFAULTS, "variants": [
            {"name": "anchor"}], "searches": [QUICK]}
    searches = {s["name"]: s for s in raw.get("searches") or []}
    if not searches or (search_name and search_name not in searches):
        sys.exit(f"bench_search: no search {search_name or ''!r} in the spec; it has {', '.join(searches) or 'none'}: "
                 "give --config a spec with `searches:` (sweep.yaml has one)")
    search = dict(searches[search_name or next(iter(searches))])
    sweep = parse_sweep({**raw, "searches": [search]})
    base = {k: v for k, v in base_keys(sweep, sweep.searches[0]).items() if k != "name"}
    placeholder = {**base, "name": "anchor", "epochs": 1, "head_epochs": 0, "steps_per_epoch": 1}
    return {**raw, "name": "bench-sh", "defaults": {}, "variants": [placeholder],
            "searches": [{**search, "base": base}]}, search


def run(config: Path, store: Path, zip_path: Path, log: Path, parallel: int) -> None:
    """`aquarium sweep run`, `parallel` variants at a time (the search's max_parallel on both sides: the same
    TensorFlow threads per trial, so the same trial trains the same), until its trials are done: stopped (SIGTERM)
    when aggregate starts, whose report and robustness measurement are no part of the comparison."""
    argv = [sys.executable, "-m", "jobs.cli", "sweep", "run", "--config", str(config), "--source", str(zip_path),
            "--store", store.as_uri(), "--max-parallel", str(parallel)]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        while proc.poll() is None and "aggregate: starting" not in log.read_text():
            time.sleep(0.5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait()
    if "aggregate: starting" not in log.read_text():
        sys.exit(f"bench_search: {config.name} exited {proc.returncode} before its trials were done; see {log}")


def outcome(store: Path, sweep: str, names: list[str]) -> dict:
    """Trial-epochs, wall seconds of the trials, best val accuracy and its trial, from the store."""
    epochs, starts, ends, vals = 0, [], [], {}
    for name in names:
        folder = store / "sweeps" / sweep / "variants" / name
        status = json.loads((folder / "status.json").read_text())
        epochs += int(status.get("epoch") or 0)
        starts.append(datetime.fromisoformat(status["started_at"]))
        ends.append(datetime.fromisoformat(status.get("finished_at") or status["updated_at"]))
        if (folder / "metrics.json").exists():
            vals[name] = json.loads((folder / "metrics.json").read_text())["val_accuracy"]
    best = max(vals, key=lambda n: (vals[n], n)) if vals else "-"
    return {"trials": len(names), "epochs": epochs, "wall": (max(ends) - min(starts)).total_seconds(),
            "best": best, "val": vals.get(best, float("nan"))}


def curves(store: Path, sweep: str, names: list[str]) -> dict[str, tuple[list[float], float, float]]:
    """Per trial of a finished run: val accuracy per epoch (history.csv), the result (metrics.json) and its
    measured seconds per epoch (status.json's start to end over the epochs)."""
    out = {}
    for name in names:
        folder = store / "sweeps" / sweep / "variants" / name
        vals = [float(r["val_accuracy"]) for r in csv.DictReader((folder / "history.csv").open())]
        status = json.loads((folder / "status.json").read_text())
        wall = datetime.fromisoformat(status["finished_at"]) - datetime.fromisoformat(status["started_at"])
        out[name] = (vals, json.loads((folder / "metrics.json").read_text())["val_accuracy"],
                     wall.total_seconds() / max(len(vals), 1))
    return out


def replay_one(measured: dict, search, epochs: int, parallel: int) -> dict:
    """One early stopping on measured curves: the trials in order, `parallel` at a time, each epoch taking its
    trial's measured seconds, Optuna's pruner judging at every rung as the driver does (the study named as the
    search: Hyperband's brackets hang on the name). So the order in which trials reach a rung, and with it the
    asynchronous promotions, are the real run's; a `tpe` search would have asked other trials after its tenth."""
    import optuna

    from common.search import pruner, rungs

    study = optuna.create_study(study_name=search.name, direction="maximize", pruner=pruner(search, epochs))
    queue, events, asked, trained, finished = list(measured), [], {}, 0, {}

    def start(name: str, now: float) -> None:
        asked[name] = study.ask()
        heapq.heappush(events, (now + measured[name][2], name, 1))

    for _ in range(min(parallel, len(queue))):
        start(queue.pop(0), 0.0)
    while events:  # the next epoch to end, of whichever trial
        now, name, epoch = heapq.heappop(events)
        vals, final, per_epoch = measured[name]
        trial, trained = asked[name], trained + 1
        trial.report(vals[epoch - 1], epoch)
        if epoch == len(vals):  # trained to the end (or its own EarlyStopping)
            study.tell(trial, final)
            finished[name] = final
        elif epoch in rungs(search, epochs) and trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            heapq.heappush(events, (now + per_epoch, name, epoch + 1))
            continue
        if queue:
            start(queue.pop(0), now)
    best = max(finished, key=lambda n: (finished[n], n), default="-")
    return {"rungs": rungs(search, epochs), "epochs": trained, "finished": len(finished), "best": best,
            "val": finished.get(best, math.nan)}


def replay(store: Path, sweep: str, names: list[str], search, epochs: int, parallel: int) -> list[dict]:
    """What other early stopping -- successive halving and Hyperband, `min_epochs` 1-3, `reduction_factor` 2-4 --
    would have cost and kept on these very trials, trained to the end in `sweep` (`replay_one` each)."""
    from common.config import EarlyStop

    measured, rows = curves(store, sweep, names), []
    for method, m, eta in itertools.product(("successive_halving", "hyperband"), (1, 2, 3), (2, 3, 4)):
        if m < epochs:
            stop = EarlyStop(method=method, min_epochs=m, reduction_factor=eta)
            rows.append({"method": method, "min_epochs": m, "reduction_factor": eta,
                         **replay_one(measured, search.model_copy(update={"early_stopping": stop}), epochs, parallel)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "sweep.yaml"))
    parser.add_argument("--search", default=None, help="a search of --config [default: its first]")
    parser.add_argument("--zip", default=os.environ.get("AQUARIUM_ZIP"))
    parser.add_argument("--keep", default=None, help="store folder to keep (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="seconds on a generated dataset (needs --zip)")
    parser.add_argument("--searched", default=None, metavar="STORE_DIR",
                        help="a folder store where this search already ran (e.g. the real `make sweep`'s ./store): "
                             "its trials are the halving side, and only the full side runs")
    args = parser.parse_args()
    if not args.zip:
        sys.exit("bench_search: give --zip or AQUARIUM_ZIP")
    from common.config import parse_sweep
    from common.search import trial_variant

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench-search-"))
    tmp.mkdir(parents=True, exist_ok=True)
    raw, search = specs(yaml.safe_load(Path(args.config).read_text()), args.search, args.quick, args.zip)
    parallel = search.get("max_parallel") or 1  # both sides: as many trials at once as the search runs
    halving = tmp / "halving.yaml"
    halving.write_text(yaml.safe_dump(raw, sort_keys=False))
    store = tmp / "store"
    searched, searched_sweep = store, "bench-sh"
    if args.searched:  # the halving side ran already (a real sweep): read it where it ran
        searched, searched_sweep = Path(args.searched), yaml.safe_load(Path(args.config).read_text())["name"]
    else:
        t = time.perf_counter()
        run(halving, store, Path(args.zip).resolve(), tmp / "halving.log", parallel)
        print(f"halving run: {time.perf_counter() - t:.0f} s with prepare (log {tmp / 'halving.log'})")
    # the same trials, trained to the end: their configs from the halving run's trial records
    sweep = parse_sweep(raw)
    records = sorted((json.loads(p.read_text()) for p in
                      (searched / "sweeps" / searched_sweep / "searches" / search["name"] / "trials").glob("*.json")),
                     key=lambda r: r["number"])
    trials = [trial_variant(sweep, sweep.searches[0], r["number"], r["params"]) for r in records]
    full = {**{k: v for k, v in raw.items() if k != "searches"}, "name": "bench-full",
            "variants": [v.model_dump() for v in trials]}
    (tmp / "full.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    t = time.perf_counter()
    run(tmp / "full.yaml", store, Path(args.zip).resolve(), tmp / "full.log", parallel)
    print(f"full run: {time.perf_counter() - t:.0f} s with prepare (log {tmp / 'full.log'})")
    names = [v.name for v in trials]
    a, b = outcome(searched, searched_sweep, names), outcome(store, "bench-full", names)
    print(f"{'':22}{'trials':>7}{'trial-epochs':>14}{'wall s':>9}{'best val':>10}  best trial")
    for label, o in ((f"{search['name']} halving", a), ("same trials, full", b)):
        print(f"{label:22}{o['trials']:>7}{o['epochs']:>14}{o['wall']:>9.0f}{o['val']:>10.3f}  {o['best']}")
    print(f"the full side's curves replayed ({parallel} at a time, in trial order) under other early stopping:")
    print(f"{'method':20}{'min_epochs':>10}{'reduction':>10}  {'rungs':18}{'trial-epochs':>14}{'finished':>9}"
          f"{'best val':>10}  best trial")
    for r in replay(store, "bench-full", names, sweep.searches[0], trials[0].epochs, parallel):
        cost = f"{r['epochs']} ({r['epochs'] / b['epochs']:.0%})"
        print(f"{r['method']:20}{r['min_epochs']:>10}{r['reduction_factor']:>10}  {str(r['rungs']):18}{cost:>14}"
              f"{r['finished']:>9}{r['val']:>10.3f}  {r['best']}")
    print(f"search: {a['epochs']}/{b['epochs']} trial-epochs ({a['epochs'] / b['epochs']:.0%}), "
          f"{a['wall']:.0f}/{b['wall']:.0f} s ({a['wall'] / max(b['wall'], 1e-9):.0%}), best val "
          f"{a['val']:.3f} ({a['best']}) vs {b['val']:.3f} ({b['best']}) with early stopping "
          f"{search['early_stopping']}")


if __name__ == "__main__":
    main()
