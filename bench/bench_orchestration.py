"""Orchestration overhead of a local sweep: how much of the wall time is not spent inside variant training.

Runs `common.executor.run_sweep` (the code behind `aquarium sweep run`) on smoke.yaml with a generated dataset
(or --zip), then puts the executor's wall time next to the variants' own `fit_seconds` (from metrics.json):

  training      sum of the variants' fit times (their critical path when they run one at a time)
  per job       what every job process costs besides fitting: interpreter + TensorFlow start, reading the
                tensors, evaluation, saving (and prepare and aggregate as a whole)
  executor      wall time covered by no job process at all: scheduling gaps, polling, skipping

    .venv/bin/python bench/bench_orchestration.py [--epochs N] [--zip PATH] [--record]

`--record` writes the table to bench/RESULTS.md under `## orchestration (issue 4)`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import yaml  # noqa: E402

from common.config import load_sweep, resolve  # noqa: E402
from common.executor import gpu_ids, run_sweep  # noqa: E402
from common.store import join, open_store  # noqa: E402

SECTION = "## orchestration (issue 4)"
NOTE = """\
*Executor share* is wall time when no job process runs at all (launching, polling every 0.25 s, status reads,
skipping): the orchestration itself; goal <= 5 %. *Not training* also counts every job's own fixed cost -- a
fresh Python + TensorFlow per process, reading the tensors, evaluation and saving model.keras -- plus prepare and
aggregate. Those are per-job constants of the process-per-variant design (the price of isolation and of running
the same command a pod runs); they shrink relative to training as epochs grow, as the second row shows."""


def spec(tmp: Path, epochs: int | None) -> Path:
    """smoke.yaml, optionally with more epochs (and no per-epoch step cap) to see the overhead amortise."""
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    if epochs:
        raw["defaults"].update(epochs=epochs, steps_per_epoch=None, early_stopping_patience=epochs)
        for v in raw["variants"]:
            v.pop("epochs", None)
            v.pop("steps_per_epoch", None)
    path = tmp / f"smoke-{epochs or 'default'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def measure(zip_path: Path, epochs: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        tmp = Path(tmp)
        config = spec(tmp, epochs)
        store_uri = f"file://{tmp}/store"
        sweep = resolve(load_sweep(config), store=store_uri, source=str(zip_path))
        out = io.StringIO()
        run = run_sweep(sweep, str(config), out=out)
        if run.exit_code:
            raise SystemExit(f"sweep failed (exit {run.exit_code}):\n{out.getvalue()}")
        store = open_store(store_uri)
        fits = {v.name: store.get_json(join(sweep.variant_prefix(v.name), "metrics.json"))["fit_seconds"]
                for v in sweep.variants}
    procs = {s.name: s.seconds for s in run.steps}
    training = sum(fits.values()) if run.parallel == 1 else max(max(fits.values()), sum(fits.values()) / run.parallel)
    variant_proc = sum(procs[n] for n in fits)
    busy = procs["prepare"] + procs["aggregate"] + (variant_proc if run.parallel == 1 else
                                                    max(variant_proc / run.parallel, max(procs[n] for n in fits)))
    return {"epochs": epochs or "smoke.yaml", "parallel": run.parallel, "wall": run.wall_seconds,
            "training": training, "prepare": procs["prepare"], "aggregate": procs["aggregate"],
            "variant_non_fit": variant_proc - sum(fits.values()), "executor": run.wall_seconds - busy,
            "fits": fits, "procs": {n: procs[n] for n in fits}}


def table(results: list[dict]) -> str:
    head = ("| epochs | parallel | wall s | training (fit) s | prepare s | aggregate s | variant jobs besides fit s "
            "| executor gaps s | not training | executor share |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        lines.append(f"| {r['epochs']} | {r['parallel']} | {r['wall']:.1f} | {r['training']:.1f} | {r['prepare']:.1f} "
                     f"| {r['aggregate']:.1f} | {r['variant_non_fit']:.1f} | {r['executor']:.2f} "
                     f"| {100 * (r['wall'] - r['training']) / r['wall']:.0f} % "
                     f"| {100 * r['executor'] / r['wall']:.1f} % |")
    lines.append("")
    for r in results:
        per = ", ".join(f"{n} {r['fits'][n]:.1f}/{r['procs'][n]:.1f}" for n in r["fits"])
        lines.append(f"- epochs {r['epochs']}: fit/process seconds per variant: {per}")
    return "\n".join(lines)


def record(text: str) -> None:
    """Replace (or append) this benchmark's section of bench/RESULTS.md, leaving other sections alone."""
    path = ROOT / "bench" / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    start = old.find(SECTION)
    end = old.find("\n## ", start + 1) if start >= 0 else -1
    body = f"{SECTION}\n\n{text}\n"
    new = (old[:start] + body + (old[end + 1:] if end >= 0 else "")) if start >= 0 else old.rstrip() + "\n\n" + body
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=None, help="dataset zip [default: a generated one]")
    parser.add_argument("--epochs", type=int, nargs="*", default=[0, 15],
                        help="epochs per variant; 0 = smoke.yaml as is [default: 0 15]")
    parser.add_argument("--record", action="store_true", help="write the table to bench/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        zip_path = args.zip
        if zip_path is None:
            from conftest import make_dataset

            zip_path = make_dataset(Path(tmp) / "generated.zip")
        started = time.time()
        results = [measure(zip_path, e or None) for e in args.epochs]
    gpus = len(gpu_ids())
    machine = (f"Machine: {os.cpu_count()} CPUs, {gpus or 'no'} GPU; dataset {args.zip or 'generated (70 images)'};"
               f" bench ran {time.time() - started:.0f} s.")
    text = f"{table(results)}\n\n{NOTE}\n\n{machine}"
    print(text)
    if args.record:
        record(text)


if __name__ == "__main__":
    main()
