"""Precision and XLA per epoch: float32 vs mixed_bfloat16 (vs mixed_float16) with and without jit_compile, the
variant's real training (`common.train.fit`, augmentation in the step), interleaved in one run.

    AQUARIUM_ZIP=../shared/datasets/aquarium-tfcsv.zip .venv/bin/python bench/bench_precision.py \
        [--variant cnn-e] [--epochs 4] [--rounds 2] [--settings float32,mixed_bfloat16,float32+jit]

Prints the CPU's bf16 support (what `precision: auto` looks at), the median epoch time of each setting (epoch 1,
tracing, left out), its speed relative to the first setting, and the validation accuracy reached after
`--epochs` (a hint only: equal accuracy needs full runs, e.g. bench/bench_sweep.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.config import load_sweep  # noqa: E402
from common.data.prepare import Options, prepare  # noqa: E402
from common.models import cpu_has_bf16, resolve_precision  # noqa: E402
from common.store import open_store  # noqa: E402
from common.train import build_model, fit, load_data  # noqa: E402

from bench_train import EpochTimer  # noqa: E402  (bench/ is this script's own folder on sys.path)


def one_run(store, data, variant, setting: str, epochs: int) -> tuple[list[float], float]:
    """Train `epochs` epochs under one setting ('float32', 'mixed_bfloat16', '...+jit'); epoch times, val acc."""
    precision, _, jit = setting.partition("+")
    v = variant.model_copy(update={"precision": precision, "jit_compile": jit == "jit", "epochs": epochs})
    keras.utils.set_random_seed(v.seed)
    model = build_model(store, v, len(data.classes), Path(tempfile.gettempdir()))
    timer = EpochTimer()
    fit(model, data, v, [timer], initial_epoch=0)
    return timer.times, timer.val_accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "sweep.yaml"))
    parser.add_argument("--variant", default="cnn-e")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", default="float32,mixed_bfloat16,float32+jit")
    args = parser.parse_args()
    zip_path = Path(os.environ.get("AQUARIUM_ZIP") or ROOT.parent / "shared" / "datasets" / "aquarium-tfcsv.zip")
    if not zip_path.is_file():
        sys.exit(f"bench_precision: dataset zip {zip_path} not found: set AQUARIUM_ZIP")
    sweep = load_sweep(args.config)
    variant, settings = sweep.variant(args.variant), args.settings.split(",")
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    times, accuracy = {s: [] for s in settings}, {s: [] for s in settings}
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        store = open_store(str(Path(tmp) / "store"))
        prepare(Options(source=str(zip_path), store=store.uri, sizes=(variant.image_size,)), log=lambda m: None)
        data = load_data(store, sweep, variant.image_size, Path(tmp) / "tensors")
        for r in range(args.rounds):
            for s in (settings if r % 2 == 0 else settings[::-1]):
                epoch_times, acc = one_run(store, data, variant, s, args.epochs)
                times[s] += epoch_times[1:]
                accuracy[s].append(acc)
                print(f"  round {r + 1} {s:22} epochs " + " ".join(f"{t:.2f}s" for t in epoch_times)
                      + f"  val acc {acc:.4f}  load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{args.variant} ({variant.image_size}px), {args.epochs} epochs x {args.rounds} rounds, nproc "
          f"{os.cpu_count()}, CPU bf16 (AMX/AVX512-BF16): {cpu_has_bf16()}, auto -> {resolve_precision('auto')}, "
          f"load before {load_before}, after {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, TF {tf.__version__}")
    base = statistics.median(times[settings[0]])
    print(f"| setting | median epoch s | speed vs {settings[0]} | val acc after {args.epochs} epochs (per round) |")
    print("|---|---:|---:|---|")
    for s in settings:
        m = statistics.median(times[s])
        print(f"| {s} | {m:.2f} | {base / m:.2f}x | {' / '.join(f'{a:.4f}' for a in accuracy[s])} |")


if __name__ == "__main__":
    main()
