"""Wrapper overhead of `train-variant`: epoch time of its fit (callbacks, per-epoch store checkpoints) against a
plain `model.fit` of the same model on the same tensors, interleaved A/B/A/B in one run because these machines
are noisy; plus the bytes a variant reads from the store.

    AQUARIUM_ZIP=../shared/datasets/aquarium-tfcsv.zip .venv/bin/python bench/bench_train.py [--variant cnn-a]
Goals: epoch-time ratio plain/wrapper >= 0.97; bytes read at 64 px <= 10 MB.
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from common.config import load_sweep  # noqa: E402
from common.data.prepare import Options, prepare  # noqa: E402
from common.pipeline import batches_per_epoch, input_pipeline  # noqa: E402
from common.store import open_store  # noqa: E402
from common.train import Reporter, StoreCheckpoint, build_model, fit, load_data  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    """Each epoch's wall time, and the last epoch's val accuracy (bench_precision imports it too)."""

    def __init__(self):
        super().__init__()
        self.times, self.val_accuracy = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)
        self.val_accuracy = (logs or {}).get("val_accuracy")


def wrapper_epochs(store, sweep, variant, data, workdir) -> list[float]:
    """The variant job's own fit: EarlyStopping, ReduceLROnPlateau and the store checkpoint every epoch."""
    keras.utils.set_random_seed(variant.seed)
    model = build_model(store, variant, len(data.classes), workdir)
    prefix = sweep.variant_prefix(variant.name)
    early = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=1000, restore_best_weights=True)
    reduce = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=variant.lr_factor,
                                               patience=variant.lr_patience)
    reporter = Reporter(store, prefix, variant, workdir)
    checkpoint = StoreCheckpoint(reporter, early, reduce)
    timer = EpochTimer()
    # the timer goes last so each epoch's time includes the checkpoint callback's share
    fit(model, data, variant, [early, reduce, checkpoint, timer], initial_epoch=0)
    checkpoint.flush()
    reporter.close()
    return timer.times


def plain_epochs(store, variant, data, workdir) -> list[float]:
    """What a user would write by hand: model.fit on the same tensors, no callbacks."""
    keras.utils.set_random_seed(variant.seed)
    model = build_model(store, variant, len(data.classes), workdir)
    arrays = data.splits["train"].in_memory(variant)  # aquarium fits `cache_mb`: the arrays the variant uses
    labels = arrays["labels"]
    train = input_pipeline(arrays["images"], labels, variant, True)
    val = data.splits["valid"].batches(variant)
    timer = EpochTimer()
    model.fit(train, validation_data=val, epochs=variant.epochs, callbacks=[timer], verbose=0,
              steps_per_epoch=batches_per_epoch(len(labels), variant))
    return timer.times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="cnn-a")
    parser.add_argument("--config", default=str(ROOT / "sweep.yaml"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    zip_path = os.environ.get("AQUARIUM_ZIP", str(ROOT.parent / "shared/datasets/aquarium-tfcsv.zip"))

    sweep = load_sweep(args.config)
    variant = sweep.variant(args.variant).model_copy(update={"epochs": args.epochs})
    workdir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    store = open_store(workdir / "store")
    prepare(Options(source=zip_path, store=store.uri, prefix=sweep.dataset.prefix, sizes=tuple(sweep.image_sizes)),
            log=lambda msg: None)
    sizes = {size: load_data(store, sweep, size, workdir / "tensors").bytes_read for size in sweep.image_sizes}
    data = load_data(store, sweep, variant.image_size, workdir / "tensors")

    wrapper, plain = [], []
    for _ in range(args.rounds):  # interleaved; the first epoch of each run (tracing) is left out
        plain += plain_epochs(store, variant, data, workdir)[1:]
        wrapper += wrapper_epochs(store, sweep, variant, data, workdir)[1:]
    p, w = statistics.median(plain), statistics.median(wrapper)
    print(f"variant {variant.name} ({variant.image_size}px, {data.splits['train'].count} train images), "
          f"{args.rounds} rounds x {args.epochs - 1} timed epochs, store {store.uri}")
    print(f"  plain model.fit      median epoch {p:.3f} s  (min {min(plain):.3f})")
    print(f"  train-variant fit    median epoch {w:.3f} s  (min {min(wrapper):.3f})")
    print(f"  ratio plain/wrapper  {p / w:.3f} of medians, {min(plain) / min(wrapper):.3f} of fastest epochs"
          f"   (goal >= 0.97)")
    for size, n in sizes.items():
        print(f"  bytes read by a {size}px variant: {n / 1e6:.1f} MB" + ("  (goal <= 10 MB)" if size == 64 else ""))


if __name__ == "__main__":
    main()
