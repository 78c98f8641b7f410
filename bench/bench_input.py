"""Input-path throughput: images per second of one training epoch, input pipeline only (no model).

    AQUARIUM_ZIP=../shared/datasets/aquarium-tfcsv.zip .venv/bin/python bench/bench_input.py [--rounds 2]

Three pipelines over the real train split, at 64 and 224 px, training=True (shuffled, the same seeded Keras
augmentation of `augmenter` below), the variant's batch size:

  seed    the seed's recipe: tf.data over the JPEG files of `images/train/<class>/`: read_file, decode at full
          size, zero-pad to 1024x1024, resize to the target size, per-image standardisation, class name ->
          one-hot through a `tf.lookup` table, shuffle, batch, augment. No cache: it decodes every epoch.
  idfd    `keras.utils.image_dataset_from_directory` on the same class folders at the target size, then
          per-image standardisation and the same augmentation.
  layers  our tensors with the pipeline as it was before issue 6: `.cache()` on the in-memory arrays and the
          augmentation as a chain of Keras layers (`augmenter`: one resampling per layer).
  tfaug   our tensors with the pipeline of issue 6: the fused augmentation (`augment.augment_and_mix`, one
          resampling) and mixup run in tf.data on the CPU, batches leave as float32 + one-hot.
  ours    `common.pipeline.input_pipeline` (issue 14): shuffle + batch of the uint8 tensors only; the cast,
          augmentation and mixup run inside the model's training step (`augment.AugmentingTrainer`).
For both of ours, epoch 1 INCLUDES reading the train shards (`tensors/<size>/train-*.tfrecord`) from the (file)
store and building the arrays, so it is the honest "from the first epoch on" figure. (Standardisation lives in the model there, so it
is not timed.) seed and idfd use the layer-by-layer `augmenter`, as the seed did.

Every run builds its dataset afresh and iterates 3 epochs; epoch 1 (construction, tracing, first read) is
reported apart from epochs 2-3 (steady state: caches warm). Besides wall-clock images/s, the CPU time the
process spent per image is printed: on a shared, loaded machine it is the steadier measure of the work. The runs are interleaved seed/idfd/ours per size
and repeated (--rounds); each figure is the median over rounds. The machine is shared: the load average is
printed before and after. Goal: ours >= 20x the seed's recipe from the first epoch on; issue 14: ours <= 0.1
CPU ms/img at 224 px.

Then the whole training step, augmentation included (`--train-rounds`, 0 skips it): the first variant of each
size (a 224-px MobileNetV3 with weights none) trained `--train-steps` batches per epoch for 3 epochs, issue 6's
way (tfaug batches into a plain compiled model) against ours (uint8 batches into the AugmentingTrainer),
interleaved; epoch 1 (tracing) left out; wall ms per step and process CPU ms per image, medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.config import CLASSES, load_sweep  # noqa: E402
from common.data.prepare import Options, prepare  # noqa: E402
from common.augment import AugmentingTrainer, augment_and_mix  # noqa: E402
from common.models import build_cnn, build_finetune, compile_model  # noqa: E402
from common.pipeline import class_table, input_pipeline  # noqa: E402
from common.shards import read_split  # noqa: E402
from common.store import open_store  # noqa: E402

SIZES = (64, 224)


def augmenter(variant) -> tf.keras.Sequential:
    """The seed's augmentation: the same transforms as `common.pipeline.augment_batch`, but as a chain of Keras
    preprocessing layers, one resampling per layer. The baselines here use it, as the seed did."""
    a, s, size = variant.augment, variant.seed, variant.image_size
    layers = []
    if a.flip:
        layers.append(tf.keras.layers.RandomFlip("horizontal", seed=s))
    if a.rotation:
        layers.append(tf.keras.layers.RandomRotation(a.rotation, fill_mode="constant", seed=s + 1))
    if a.zoom:
        layers.append(tf.keras.layers.RandomZoom((-a.zoom, a.zoom), fill_mode="constant", seed=s + 2))
    if a.crop:
        layers += [tf.keras.layers.RandomCrop(round(size * (1 - a.crop)), round(size * (1 - a.crop)), seed=s + 3),
                   tf.keras.layers.Resizing(size, size)]
    if a.contrast:
        layers.append(tf.keras.layers.RandomContrast(a.contrast, seed=s + 4))
    return tf.keras.Sequential(layers, name="augment")

EPOCHS = 3
PIPELINES = ("seed", "idfd", "layers", "tfaug", "ours")
LABELS = {"seed": "seed recipe (JPEG, decode full, pad 1024, resize)",
          "idfd": "keras image_dataset_from_directory",
          "layers": "store tensors, pipeline before issue 6 (Keras layers, cache)",
          "tfaug": "store tensors, issue 6: fused augmentation in tf.data",
          "ours": "ours (issue 14): uint8 batches, augmentation in the train step"}


def seed_dataset(train_dir: Path, size: int, variant) -> tf.data.Dataset:
    """The seed's tf.data recipe, straight from the JPEG files in their class folders."""
    files = sorted(str(p) for p in train_dir.glob("*/*") if p.is_file())
    names = [Path(f).parent.name for f in files]
    table = class_table(CLASSES)

    def load(path, name):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        image = tf.image.pad_to_bounding_box(image, (1024 - h) // 2, (1024 - w) // 2, 1024, 1024)
        image = tf.image.resize(image, (size, size))
        image = tf.image.per_image_standardization(image)
        return image, tf.one_hot(table.lookup(name), len(CLASSES))

    augment = augmenter(variant)
    ds = tf.data.Dataset.from_tensor_slices((files, names))
    ds = ds.shuffle(len(files), seed=variant.seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(variant.batch_size)
    ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def idfd_dataset(train_dir: Path, size: int, variant) -> tf.data.Dataset:
    """What the Keras tutorials write: image_dataset_from_directory + standardisation + augmentation."""
    ds = keras.utils.image_dataset_from_directory(
        str(train_dir), labels="inferred", label_mode="categorical", image_size=(size, size),
        batch_size=variant.batch_size, shuffle=True, seed=variant.seed, verbose=False)
    augment = augmenter(variant)
    ds = ds.map(lambda x, y: (tf.image.per_image_standardization(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def train_split(store, size: int) -> dict:
    """The train split's tensors, read whole from the (file) store's shards."""
    return read_split(store, f"data/tensors/{size}", "train", Path(store.root))


def ours_dataset(store, size: int, variant) -> tf.data.Dataset:
    """The variant's path: the train split's shards from the store, then `input_pipeline` (timed as epoch 1)."""
    split = train_split(store, size)
    one_epoch = variant.model_copy(update={"epochs": 1})  # the stream holds `epochs` epochs: one per iteration
    return input_pipeline(split["images"], split["labels"], one_epoch, training=True)


def tfaug_pipeline(images, labels, variant) -> tf.data.Dataset:
    """Issue 6's training input: shuffle, batch, then the fused augmentation and mixup in tf.data (CPU)."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.shuffle(len(images), seed=variant.seed, reshuffle_each_iteration=True).batch(variant.batch_size)
    seeds = tf.data.Dataset.random(seed=variant.seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        lambda xy, seed: augment_and_mix(xy[0], xy[1], seed, variant, len(CLASSES)),
        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def tfaug_dataset(store, size: int, variant) -> tf.data.Dataset:
    split = train_split(store, size)
    return tfaug_pipeline(split["images"], split["labels"], variant)


def layers_dataset(store, size: int, variant) -> tf.data.Dataset:
    """`input_pipeline` as it was before issue 6 (training branch), for the before/after comparison."""
    split = train_split(store, size)
    images, labels = split["images"], split["labels"]
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    ds = ds.shuffle(len(images), seed=variant.seed, reshuffle_each_iteration=True).batch(variant.batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), tf.one_hot(y, len(CLASSES))),
                num_parallel_calls=tf.data.AUTOTUNE)
    augment = augmenter(variant)
    ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def cpu_seconds() -> float:
    """CPU time of this process, all threads (tf.data's included): the work done, whatever the machine's load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(name: str, store, size: int, variant) -> tuple[int, list[float], list[float]]:
    """(images per epoch, wall seconds per epoch, CPU seconds per epoch); epoch 1 includes building the dataset."""
    train_dir = store.root / "data" / "images" / "train"  # a file store: the class folders are on disk
    t, c = time.perf_counter(), cpu_seconds()
    if name == "seed":
        ds = seed_dataset(train_dir, size, variant)
    elif name == "idfd":
        ds = idfd_dataset(train_dir, size, variant)
    elif name == "layers":
        ds = layers_dataset(store, size, variant)
    elif name == "tfaug":
        ds = tfaug_dataset(store, size, variant)
    else:
        ds = ours_dataset(store, size, variant)
    times, cpu, images = [], [], 0
    for _ in range(EPOCHS):
        images = 0
        for x, _y in ds:
            images += int(x.shape[0])
        now, now_cpu = time.perf_counter(), cpu_seconds()
        times.append(now - t)
        cpu.append(now_cpu - c)
        t, c = now, now_cpu
    return images, times, cpu


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


class StepTimer(keras.callbacks.Callback):
    """Wall and process-CPU seconds of every epoch of a fit."""

    def __init__(self):
        super().__init__()
        self.wall, self.cpu = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.start_cpu = time.perf_counter(), cpu_seconds()

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self.start)
        self.cpu.append(cpu_seconds() - self.start_cpu)


def build_net(variant):
    keras.utils.set_random_seed(variant.seed)
    if variant.kind == "cnn":
        return build_cnn(variant, len(CLASSES))
    return build_finetune(variant, len(CLASSES), None)  # weights none: the step's cost is the same


def train_run(mode: str, store, variant, steps: int) -> tuple[list[float], list[float]]:
    """3 epochs of `steps` training steps, augmentation included; (wall, CPU) seconds per epoch."""
    split = train_split(store, variant.image_size)
    variant = variant.model_copy(update={"epochs": EPOCHS})
    if mode == "tfaug":  # issue 6: augmented float batches from tf.data into the plain model
        model = compile_model(build_net(variant), variant)
        ds = tfaug_pipeline(split["images"], split["labels"], variant).repeat()
    else:  # issue 14: uint8 batches, augmentation inside the trainer's step
        model = compile_model(AugmentingTrainer(build_net(variant), variant, len(CLASSES)), variant)
        ds = input_pipeline(split["images"], split["labels"], variant, training=True)
    timer = StepTimer()
    model.fit(ds, epochs=EPOCHS, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return timer.wall, timer.cpu


def input_rounds(store, variants, pipelines, rounds) -> tuple[dict, dict]:
    """The input-path runs, interleaved, order reversed every other round; per-(pipeline, size) figures."""
    results = {(p, s): {"epoch1": [], "steady": [], "cpu1": [], "cpu_steady": []} for p in pipelines for s in SIZES}
    count = {}
    for r in range(rounds):
        for size in SIZES:
            for name in (pipelines if r % 2 == 0 else pipelines[::-1]):
                n, times, cpu = run(name, store, size, variants[size])
                count[size] = n
                res = results[name, size]
                res["epoch1"].append(n / times[0])
                res["steady"].append(n * (EPOCHS - 1) / sum(times[1:]))
                res["cpu1"].append(cpu[0] / n * 1000)
                res["cpu_steady"].append(sum(cpu[1:]) / (n * (EPOCHS - 1)) * 1000)
                print(f"  round {r + 1} {name:6} {size:3}px: epochs " + " ".join(f"{t:.2f}s" for t in times)
                      + "  cpu " + " ".join(f"{t:.2f}s" for t in cpu) + f"  load {os.getloadavg()[0]:.1f}",
                      flush=True)
    return results, count


def train_rounds(store, variants, steps, rounds) -> dict:
    """Train-step runs, tfaug/ours interleaved; per-(mode, size) wall ms per step and CPU ms per image."""
    results = {(m, s): {"ms_step": [], "cpu_img": []} for m in ("tfaug", "ours") for s in SIZES}
    for r in range(rounds):
        for size in SIZES:
            for mode in (("tfaug", "ours") if r % 2 == 0 else ("ours", "tfaug")):
                v = variants[size]
                wall, cpu = train_run(mode, store, v, steps[size])
                results[mode, size]["ms_step"].append(sum(wall[1:]) / (steps[size] * (EPOCHS - 1)) * 1000)
                results[mode, size]["cpu_img"].append(
                    sum(cpu[1:]) / (steps[size] * (EPOCHS - 1) * v.batch_size) * 1000)
                print(f"  train round {r + 1} {mode:5} {size:3}px {v.name}: epochs "
                      + " ".join(f"{t:.2f}s" for t in wall) + f"  load {os.getloadavg()[0]:.1f}", flush=True)
    return results


def print_input_table(results, pipelines, rounds, count, variants) -> None:
    base_name = pipelines[0]
    print(f"\ninput throughput, train split ({count[64]} images), batch {variants[64].batch_size}, training=True "
          f"(augmented), {EPOCHS} epochs per run, median of {rounds} interleaved rounds; speed-ups vs {base_name}")
    print(f"| pipeline | size | epoch-1 img/s | steady (epochs 2-3) img/s | speed-up vs {base_name}, epoch 1 | steady "
          "| CPU ms/img, epoch 1 | steady | CPU speed-up, epoch 1 | steady |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    med = {k: {m: statistics.median(v[m]) for m in v} for k, v in results.items()}
    for size in SIZES:
        base = med[base_name, size]
        for name in pipelines:
            m = med[name, size]
            print(f"| {LABELS[name]} | {size} | {m['epoch1']:.0f} | {m['steady']:.0f} "
                  f"| {m['epoch1'] / base['epoch1']:.1f}x | {m['steady'] / base['steady']:.1f}x "
                  f"| {m['cpu1']:.3f} | {m['cpu_steady']:.3f} "
                  f"| {base['cpu1'] / m['cpu1']:.1f}x | {base['cpu_steady'] / m['cpu_steady']:.1f}x |")
    if "ours" in pipelines:
        cpu = med["ours", 224]["cpu_steady"]
        print(f"goal (issue 14) input path <= 0.1 CPU ms/img at 224 px: {'met' if cpu <= 0.1 else 'NOT met'} "
              f"({cpu:.3f} steady, {med['ours', 224]['cpu1']:.3f} epoch 1)")


def print_train_table(results, variants, steps, rounds) -> None:
    per_size = ", ".join(f"{n} at {s} px" for s, n in steps.items())
    print(f"\ntrain step incl. augmentation, steps per epoch {per_size}, {EPOCHS - 1} timed epochs, "
          f"median of {rounds} rounds")
    print("| size | variant | issue 6 (tf.data aug) ms/step | ours (aug in step) ms/step | speed-up "
          "| CPU ms/img issue 6 | ours |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size in SIZES:
        a = {k: statistics.median(v) for k, v in results["tfaug", size].items()}
        b = {k: statistics.median(v) for k, v in results["ours", size].items()}
        print(f"| {size} | {variants[size].name} | {a['ms_step']:.0f} | {b['ms_step']:.0f} "
              f"| {a['ms_step'] / b['ms_step']:.2f}x | {a['cpu_img']:.2f} | {b['cpu_img']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pipelines", default=",".join(PIPELINES), help="subset, first is the baseline")
    parser.add_argument("--train-rounds", type=int, default=2)
    parser.add_argument("--train-steps", default="14,4", help="steps per epoch at 64,224 px")
    parser.add_argument("--config", default=str(ROOT / "sweep.yaml"))
    parser.add_argument("--zip", default=os.environ.get("AQUARIUM_ZIP")
                        or str(ROOT.parent / "shared" / "datasets" / "aquarium-tfcsv.zip"))
    parser.add_argument("--quick", action="store_true",
                        help="the suite's mode: one round of ours and tfaug, one training step per epoch")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.pipelines, args.train_rounds, args.train_steps = 1, "tfaug,ours", 1, "1,1"
    pipelines = tuple(args.pipelines.split(","))
    steps = dict(zip(SIZES, map(int, args.train_steps.split(","))))
    zip_path = Path(args.zip)
    if not zip_path.is_file():
        sys.exit(f"bench_input: dataset zip {zip_path} not found: set AQUARIUM_ZIP")
    sweep = load_sweep(args.config)
    # the sweep's own variants of each size (batch size, augmentation, seed) without the frame-robust options
    # (issue 13): they need content boxes, which the issue-6/14 pipelines compared here do not carry
    plain = {"frame": 0.0, "border": 0.0, "content_crop": 0.0, "consistency": 0.0}
    variants = {size: next(v for v in sweep.variants if v.image_size == size) for size in SIZES}
    variants = {size: v.model_copy(update={"augment": v.augment.model_copy(update=plain)})
                for size, v in variants.items()}

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        store = open_store(str(Path(tmp) / "store"))
        prepare(Options(source=str(zip_path), store=store.uri, sizes=SIZES), log=lambda m: None)
        results, count = input_rounds(store, variants, pipelines, args.rounds)
        trained = train_rounds(store, variants, steps, args.train_rounds) if args.train_rounds else None
    load_after = load_average()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"\nnproc {os.cpu_count()}, load average before {load_before}, after {load_after}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}, TF {tf.__version__}, Keras {keras.__version__}")
    print_input_table(results, pipelines, args.rounds, count, variants)
    if trained:
        print_train_table(trained, variants, steps, args.train_rounds)


if __name__ == "__main__":
    main()
