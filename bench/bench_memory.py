"""Peak memory (max RSS) of a variant process, next to a bare `python -c "import tensorflow"`.

    AQUARIUM_ZIP=../shared/datasets/aquarium-tfcsv.zip .venv/bin/python bench/bench_memory.py [--steps 5]

The real zip is prepared (64 and 224 px) into a temporary file store; a temporary sweep spec based on sweep.yaml
keeps its cnn-a (64 px CNN) and mnv3-a (224 px MobileNetV3Large fine-tune) with weights: none, 2 epochs and a
few steps per epoch. Each job runs as its own process exactly as a pod would (`python -m jobs.cli
train-variant|finetune-variant`): read the tensors, train, evaluate val and test, write everything to the store.
The peak RSS of each child comes from `os.wait4` (the kernel's ru_maxrss of that one child), so a child's figure
is never another child's; the jobs do not fork workers. The children are started by a tiny launcher process, not
by this one: Linux carries the high-water RSS of the forking process over the exec into the child's ru_maxrss,
and this process holds TensorFlow and the tensors after `prepare` (~1 GB), which would hide the children's own
figures. The launcher (a bare Python, ~10 MB) is the floor of every figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


# Runs argv[1:] as its child and prints "<exit code> <child's ru_maxrss in KiB> <seconds>" on the last line.
LAUNCHER = """
import os, subprocess, sys, time
t = time.perf_counter()
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, time.perf_counter() - t)
"""


def peak_rss(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """(peak RSS in MiB, seconds, exit code) of one child process, started by the lean launcher."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "wb") as out:
        result = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=out, env=env, check=True)
    out_lines = result.stdout.decode().strip().splitlines()
    with open(log, "ab") as out:
        out.write("\n".join(out_lines[:-1]).encode())
    code, kib, seconds = out_lines[-1].split()
    return int(kib) / 1024, float(seconds), int(code)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5, help="steps per epoch of each variant")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    zip_path = Path(os.environ.get("AQUARIUM_ZIP") or ROOT.parent / "shared" / "datasets" / "aquarium-tfcsv.zip")
    if not zip_path.is_file():
        sys.exit(f"bench_memory: dataset zip {zip_path} not found: set AQUARIUM_ZIP")
    from common.data.prepare import Options, prepare
    from common.store import open_store

    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        store = open_store(str(tmp / "store"))
        prepare(Options(source=str(zip_path), store=store.uri, sizes=(64, 224)), log=lambda m: None)
        tensor_mb = {size: sum(p.stat().st_size for p in (tmp / "store" / "data" / "tensors" / str(size)).glob(
            "*.tfrecord")) / 2**20 for size in (64, 224)}
        spec = yaml.safe_load((ROOT / "sweep.yaml").read_text())
        spec["store"] = store.uri
        spec["dataset"]["source"] = str(zip_path)
        override = {"epochs": args.epochs, "steps_per_epoch": args.steps}
        keep = {"cnn-a": {}, "mnv3-a": {"weights": "none"}}
        spec["variants"] = [{**v, **override, **keep[v["name"]]} for v in spec["variants"] if v["name"] in keep]
        config = tmp / "sweep.yaml"
        config.write_text(yaml.safe_dump(spec))

        runs = [
            ('bare `python -c "import tensorflow"`', [PYTHON, "-c", "import tensorflow"]),
            ("train-variant cnn-a (CNN, 64 px)",
             [PYTHON, "-m", "jobs.cli", "train-variant", "--config", str(config), "--variant", "cnn-a"]),
            ("finetune-variant mnv3-a (MobileNetV3Large, 224 px, weights none)",
             [PYTHON, "-m", "jobs.cli", "finetune-variant", "--config", str(config), "--variant", "mnv3-a"]),
        ]
        rows = [("launcher floor: bare `python -c pass`", *peak_rss([PYTHON, "-c", "pass"], tmp / "floor.log")[:2])]
        for i, (name, cmd) in enumerate(runs):
            rss, seconds, code = peak_rss(cmd, tmp / f"run{i}.log")
            if code != 0:
                sys.stdout.write((tmp / f"run{i}.log").read_text()[-3000:])
                sys.exit(f"bench_memory: {name} exited with {code}")
            rows.append((name, rss, seconds))
            print(f"  {name}: peak RSS {rss:.0f} MiB, {seconds:.1f} s", flush=True)
    load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    base = rows[1][1]
    print(f"\npeak RSS per process ({args.epochs} epochs x {args.steps} steps, then val + test evaluation); "
          f"prepared tensors (train+valid+test shards): 64 px {tensor_mb[64]:.1f} MiB, 224 px {tensor_mb[224]:.1f} MiB")
    print(f"nproc {os.cpu_count()}, load average before {load_before}, after {load_after}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}")
    print("| process | peak RSS MiB | over bare TensorFlow import, MiB | wall s |")
    print("|---|---:|---:|---:|")
    for i, (name, rss, seconds) in enumerate(rows):
        print(f"| {name} | {rss:.0f} | {'-' if i == 0 else f'{rss - base:+.0f}'} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
