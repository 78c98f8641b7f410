"""One variant, one pod: read the prepared tensors, train, evaluate, write everything to the store.

Follow a variant top to bottom in `run_variant`. The store holds the truth at every moment:
  status.json  updated at start, every epoch and at the end (phase, epoch, best val accuracy, error);
  checkpoint/  after every epoch: weights and optimizer state (the best epoch's file is kept too) and the
               callbacks' state (state.json, written last, is the commit point), so a killed pod resumes
               from its last epoch with the same weights, optimizer and callback state;
  _SUCCESS     only after model.keras, metrics.json and predictions.csv are all written.
Checkpoint uploads run on a background thread in order, so the next epoch trains while the last one uploads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from common import lease, shards
from common.augment import AugmentingTrainer, train_boxes
from common.checkpoint import StoreCheckpoint, TrialStopper, load_arrays
from common.config import Sweep, Variant
from common.data import SPLITS
from common.errors import AquariumError, BadInput, Interrupted, TransientError
from common.metrics import evaluation
from common.models import (IMAGENET_FILES, IMAGENET_URL, backbone_model, build_cnn, build_finetune,
                           compile_model, device_kind, inference_model, resolve_precision)
from common.pipeline import batches_per_epoch, input_pipeline
from common.status import is_current, marker, stale_reason
from common.store import Store, fetch_object, join

log = logging.getLogger("aquarium.train")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Split:
    """One split at one size: its shards on local disk and its counts (from the index); the pixels are read only
    when used -- streamed, or held in memory when the split fits the variant's `cache_mb` (`in_memory`)."""

    paths: list[str]
    size: int
    class_counts: list[int]  # in the order of Data.classes
    mb: float  # pixel megabytes: what holding it in memory costs
    _arrays: dict[str, np.ndarray] | None = None

    @property
    def count(self) -> int:
        return sum(self.class_counts)

    def in_memory(self, variant: Variant) -> dict[str, np.ndarray] | None:
        """images, labels, filenames, boxes as arrays (read once, then kept) when the split fits `cache_mb`."""
        if self.mb > variant.cache_mb:
            return None
        if self._arrays is None:
            self._arrays = shards.load_arrays(self.paths, self.size)
        return self._arrays

    def batches(self, variant: Variant) -> tf.data.Dataset:
        """(uint8 images, labels) in stored order: from memory when it fits, else streamed from the shards."""
        arrays = self.in_memory(variant)
        if arrays is not None:
            return input_pipeline(arrays["images"], arrays["labels"], variant, training=False)
        return shards.records(self.paths, self.size, variant.batch_size).map(lambda b: (b["images"], b["labels"]))


@dataclass
class Data:
    classes: list[str]
    fingerprint: str
    splits: dict[str, Split]
    bytes_read: int  # shard bytes of this size: what a pod downloads (or a folder store serves)


def load_data(store: Store, sweep: Sweep, size: int, folder: Path) -> Data:
    """The prepared shards of one image size on local disk (`folder`: downloaded from an S3 store; a folder
    store's own files); refuses a dataset that `prepare` has not finished, or an older layout."""
    prefix = sweep.dataset.prefix
    done = store.is_complete(prefix)
    if done is None:
        raise BadInput(f"no prepared dataset at {store.url(prefix)}: run `aquarium prepare --config ...` first")
    base = join(prefix, "tensors", str(size))
    index = shards.read_index(store, base)
    classes = store.get_json(join(prefix, "classes.json"))
    splits = {s: Split(shards.local_shards(store, base, index, s, folder), size,
                       [index["splits"][s]["classes"].get(c, 0) for c in classes], shards.split_mb(index, s))
              for s in SPLITS}
    return Data(classes=classes, fingerprint=str(done.get("fingerprint", "")), splits=splits,
                bytes_read=sum(sh.get("bytes", 0) for s in SPLITS for sh in index["splits"][s]["shards"]))


def class_weights(counts: list[int]) -> dict[int, float]:
    """Inverse class frequency from the images per class, normalised so a balanced dataset gets weight 1."""
    total, n = sum(counts), len(counts)
    return {i: float(total / (n * c)) if c else 0.0 for i, c in enumerate(counts)}


def package_versions() -> dict[str, str]:
    names = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "boto3", "aquarium-sweep")
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Reporter:
    """status.json and job.log of one variant in the store, kept current for `sweep status` and post-mortems."""

    def __init__(self, store: Store, prefix: str, variant: Variant, workdir: Path):
        self.store, self.prefix, self.variant, self.workdir = store, prefix, variant, workdir
        self.log_path = workdir / "job.log"
        self.handler = logging.FileHandler(self.log_path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger("aquarium").addHandler(self.handler)
        self.status = {"phase": "running", "epoch": 0, "epochs": variant.epochs, "best_val_accuracy": None,
                       "val_accuracy": None, **marker(variant), "started_at": now(),
                       "finished_at": None, "error": None, "exit_code": None}
        self.checkpoint: StoreCheckpoint | None = None  # its queued uploads are finished even on failure
        self.lease: lease.Lease | None = None  # checked before every commit point: one writer per variant

    def update(self, **changes) -> None:
        self.status.update(changes, updated_at=now())
        self.store.put_json(join(self.prefix, "status.json"), self.status)

    def upload_log(self) -> None:
        self.store.upload(join(self.prefix, "job.log"), self.log_path)

    def failed(self, e: BaseException) -> None:
        """Record a failure in the store: the last epoch's upload, then status.json (phase failed or interrupted,
        error, exit code) and job.log. Never raises: the store itself may be what failed."""
        code = e.exit_code if isinstance(e, AquariumError) else (130 if isinstance(e, KeyboardInterrupt) else 1)
        phase = "interrupted" if isinstance(e, (Interrupted, KeyboardInterrupt)) else "failed"
        log.error("%s: %s: %s", self.variant.name, phase, e)
        try:
            if self.checkpoint is not None:
                self.checkpoint.flush()
            self.update(phase=phase, error=f"{type(e).__name__}: {e}", exit_code=code, finished_at=now())
            self.upload_log()
        except Exception as upload_error:
            log.error("could not record the failure in the store: %s", upload_error)

    def close(self) -> None:
        """Detach the log file, so a second variant in the same process does not write into this one's log."""
        logging.getLogger("aquarium").removeHandler(self.handler)
        self.handler.close()


@contextlib.contextmanager
def recorded_run(store: Store, prefix: str, variant: Variant):
    """The bookkeeping around one training run: a work folder, the Reporter (status.json, job.log) and the
    SIGTERM handler; any failure is recorded in the store before it propagates (`Reporter.failed`)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"aquarium-{variant.name}-"))
    reporter = Reporter(store, prefix, variant, workdir)
    _sigterm_seen[0] = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield reporter
    except BaseException as e:
        reporter.failed(e)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        reporter.close()
        shutil.rmtree(workdir, ignore_errors=True)


def resolve_weights(store: Store, variant: Variant, workdir: Path) -> str | None:
    """'imagenet' (Keras downloads it, or the file in AQUARIUM_WEIGHTS), 'none', a local file, or an s3:// key
    staged once per cluster."""
    w = variant.weights
    if w.lower() == "none":
        return None
    if w == "imagenet":
        return imagenet_weights(store, variant, workdir)
    if w.startswith("s3://"):
        try:  # from the S3 service of the sweep's store (sweep.endpoint)
            return str(fetch_object(w, workdir, store.endpoint))
        except KeyError:
            raise BadInput(f"variant {variant.name}: weights file {w} not found: upload it there first") from None
    path = Path(w.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise BadInput(f"variant {variant.name}: weights file {path} not found: use imagenet, none, a path or s3:// key")
    return str(path)


def imagenet_weights(store: Store, variant: Variant, workdir: Path) -> str:
    """`weights: imagenet` with no network: AQUARIUM_WEIGHTS names a folder or an s3:// prefix holding the no-top
    file under Keras' own name (or, for the small backbone, the shared file's name). Unset: Keras downloads it."""
    where = os.environ.get("AQUARIUM_WEIGHTS", "").strip()
    if not where:
        return "imagenet"
    names = IMAGENET_FILES[variant.backbone]
    for name in names:
        if where.startswith("s3://"):
            try:  # from the S3 service of the sweep's store, like the dataset and the store itself
                return str(fetch_object(join(where, name), workdir, store.endpoint))
            except KeyError:
                continue
        path = Path(where.removeprefix("file://")).expanduser() / name
        if path.is_file():
            return str(path)
    raise BadInput(f"variant {variant.name}: no {names[0]} in AQUARIUM_WEIGHTS={where}: put it there (Keras fetches "
                   f"it from {IMAGENET_URL}{names[0]}), or unset AQUARIUM_WEIGHTS to download it")


def check_trainable_layers(variant: Variant) -> None:
    """`trainable_layers` larger than the backbone would silently train every layer: refuse it before any
    training, counting the layers of the very backbone `build_finetune` makes (built without weights: ~1 s).
    `all` says "every layer" on purpose."""
    if variant.kind != "finetune" or variant.trainable_layers == "all":
        return
    total, name = len(backbone_model(variant, None).layers), f"MobileNetV3{variant.backbone.title()}"
    if variant.trainable_layers > total:
        raise BadInput(f"variant {variant.name}: trainable_layers {variant.trainable_layers} is more than the "
                       f"{total} layers of {name}: give at most {total}, or `all` to train every layer")


@dataclass(frozen=True)
class Phase:
    """One `fit` of a variant: epochs [start, end), the backbone layers it trains, its learning rate."""

    start: int
    end: int
    trainable_layers: int | str
    learning_rate: float


def phases(variant: Variant) -> list[Phase]:
    """The Keras transfer-learning recipe as fits: with `head_epochs`, first the new head alone on a frozen
    backbone, then the last `trainable_layers` unfrozen at `finetune_learning_rate`; otherwise one phase."""
    if variant.kind != "finetune" or not variant.head_epochs:
        return [Phase(0, variant.epochs, variant.trainable_layers, variant.learning_rate)]
    return [Phase(0, variant.head_epochs, 0, variant.learning_rate),
            Phase(variant.head_epochs, variant.epochs, variant.trainable_layers,
                  variant.finetune_learning_rate or variant.learning_rate)]


def phase_at(variant: Variant, epoch: int) -> Phase:
    """The phase that trains the next epoch after `epoch` finished ones."""
    return next((p for p in phases(variant) if epoch < p.end), phases(variant)[-1])


def build_net(store: Store, variant: Variant, num_classes: int, workdir: Path,
              phase: Phase | None = None) -> keras.Model:
    """The inference model the variant saves: the CNN, or MobileNetV3 with its staged weights and the phase's
    trainable layers (default: the first phase's)."""
    phase = phase or phases(variant)[0]
    if variant.kind == "cnn":
        return build_cnn(variant, num_classes)
    weights = resolve_weights(store, variant, workdir)
    log.info("%s: MobileNetV3%s, weights %s, %s backbone layers trainable", variant.name, variant.backbone.title(),
             "ImageNet (" + (Path(weights).name if weights != "imagenet" else "Keras' download") + ")"
             if variant.weights == "imagenet" else weights or "none (random)", phase.trainable_layers)
    try:
        return build_finetune(variant, num_classes, weights, phase.trainable_layers)
    except ValueError as e:  # a weights file of another backbone or format
        raise BadInput(f"variant {variant.name}: weights {weights} do not fit MobileNetV3{variant.backbone.title()}"
                       f" ({' '.join(str(e).split())[:120]}): check `backbone` and the file") from None
    except Exception as e:  # keras.utils.get_file raises a bare Exception when the download fails
        if weights == "imagenet" and "URL fetch failure" in str(e):
            raise TransientError(
                f"variant {variant.name}: cannot download the ImageNet weights ({' '.join(str(e).split())}); without"
                f" network set AQUARIUM_WEIGHTS to a folder or s3:// prefix holding the no-top weights file"
            ) from None
        raise


def build_model(store: Store, variant: Variant, num_classes: int, workdir: Path,
                phase: Phase | None = None) -> AugmentingTrainer:
    """The compiled trainer around the net: augmentation and mixup run inside its training step."""
    phase = phase or phases(variant)[0]
    net = build_net(store, variant, num_classes, workdir, phase)
    log.info("%s: precision %s on %s, jit_compile %s", variant.name, net.dtype_policy.name, device_kind(),
             variant.jit_compile)
    return compile_model(AugmentingTrainer(net, variant, num_classes), variant, phase.learning_rate)


def load_checkpoint(store: Store, prefix: str, variant: Variant, num_classes: int, workdir: Path):
    """(model, state) of the last finished epoch -- weights and optimizer state -- or (None, None). At a phase
    change (`phases`) the model is the next phase's, with a new optimizer whose step counter counts on."""
    ckpt = join(prefix, "checkpoint")
    try:
        state = store.get_json(join(ckpt, "state.json"))
    except KeyError:
        return None, None
    if not is_current(state, variant):
        log.info("checkpoint not resumed, starting afresh: %s", stale_reason(state, variant))
        return None, None
    phase = phase_at(variant, state["epoch"])
    model = build_model(store, variant, num_classes, workdir, phase)
    check_same_precision(state, model, variant)
    for name in {state["checkpoint"], state.get("best_checkpoint")} - {None}:
        store.download(join(ckpt, name), workdir / name)
    model.optimizer.build(model.trainable_variables)
    arrays = load_arrays(workdir / state["checkpoint"])
    n = len(model.weights)
    model.set_weights(arrays[:n])
    if phase.start < state["epoch"]:  # the checkpoint's optimizer is this phase's own
        for variable, value in zip(model.optimizer.variables, arrays[n:], strict=True):
            variable.assign(value)
    else:  # a phase begins here: its new optimizer counts steps on (augmentation draws are keyed to the step)
        model.optimizer.iterations.assign(state["steps"])
    return model, state


def check_same_precision(state: dict, model: keras.Model, variant: Variant) -> None:
    """A checkpoint continues only in the precision it was trained in: resuming a bfloat16 run in float32 (or
    back) would silently give a history no uninterrupted run has. `auto` resolves per machine, so a pod
    rescheduled onto another kind of device meets this; AQUARIUM_PRECISION says which one to continue in."""
    saved, now_ = state.get("precision"), model.net.dtype_policy.name
    if saved and saved != now_:
        raise BadInput(f"variant {variant.name}: its checkpoint (epoch {state['epoch']}) was trained in {saved}, "
                       f"this machine computes {variant.precision!r} as {now_}: set AQUARIUM_PRECISION={saved} to "
                       f"resume it, or rerun with --force to start afresh")


def evaluate(model: keras.Model, data: Data, variant: Variant) -> tuple[dict, str]:
    """metrics.json content and predictions.csv text for the val and test splits (test is only evaluated), from
    the inference `model` exactly as it is saved (`models.inference_model`: with test-time flips if set).
    The splits stream from their shards in stored order, a batch at a time: memory holds the answers only."""
    splits = {}
    for split in ("valid", "test"):
        part = data.splits[split]
        probs, labels, names = [np.zeros((0, len(data.classes)), np.float32)], [], []
        for batch in shards.records(part.paths, part.size, variant.batch_size):
            probs.append(np.asarray(model.predict_on_batch(tf.cast(batch["images"], tf.float32))))
            labels.append(batch["labels"].numpy())
            names += [n.decode() for n in batch["filenames"].numpy()]
        splits[split] = (np.concatenate(labels) if labels else np.zeros((0,), np.int32), np.concatenate(probs),
                         np.asarray(names, dtype=str))
    return evaluation(data.classes, splits)


def fit(model, data: Data, variant: Variant, callbacks: list, initial_epoch: int, epochs: int | None = None):
    """model.fit on the variant's input pipeline; the one place training happens (the benchmark calls it too).

    The training stream starts at `initial_epoch`, so a resumed run gets the same batches as an uninterrupted one:
    from memory when the train split fits `cache_mb` (`pipeline.input_pipeline`), else streamed from the shards
    (`shards.streamed_training`); both key every epoch's order to (seed, epoch).
    """
    train = data.splits["train"]
    arrays = train.in_memory(variant)
    if arrays is not None:
        boxes = train_boxes(arrays, variant, f"the {variant.image_size}px train tensors")
        stream = input_pipeline(arrays["images"], arrays["labels"], variant, True, first_epoch=initial_epoch,
                                boxes=boxes)
    else:
        stream = shards.streamed_training(train.paths, train.count, variant, initial_epoch, variant.augment.uses_boxes)
    weights = class_weights(train.class_counts) if variant.class_weights else None
    return model.fit(stream, validation_data=data.splits["valid"].batches(variant),
                     epochs=variant.epochs if epochs is None else epochs,
                     initial_epoch=initial_epoch, steps_per_epoch=batches_per_epoch(train.count, variant),
                     callbacks=callbacks, class_weight=weights, shuffle=False, verbose=2)


SIGTERM_MESSAGE = "received SIGTERM: stopped after the last checkpointed epoch; rerun to resume"
_sigterm_seen = [False]  # set by _on_sigterm, read by SigtermStop


def _on_sigterm(signum, frame):
    _sigterm_seen[0] = True
    raise Interrupted(SIGTERM_MESSAGE)


class SigtermStop(keras.callbacks.Callback):
    """Raises Interrupted after the batch in which SIGTERM came. `_on_sigterm` raises at once, but a raise that
    lands while Python runs a finaliser (a tf.data iterator's `__del__`, collected between batches) is only printed
    ("Exception ignored in ...") and training would carry on to the end; this sees the flag the handler left."""

    def _check(self, step, logs=None):
        if _sigterm_seen[0]:
            raise Interrupted(SIGTERM_MESSAGE)

    on_train_batch_end = on_test_batch_end = on_epoch_end = _check


def run_variant(store: Store, sweep: Sweep, variant: Variant, force: bool = False) -> dict:
    """Train and evaluate one variant as its only writer (`common.lease`: a second run waits for the first,
    then skips its result or resumes its work); returns its metrics."""
    with lease.held(store, sweep.variant_prefix(variant.name), f"variant {variant.name}") as held:
        return _run_variant(store, sweep, variant, force, held)


def _run_variant(store: Store, sweep: Sweep, variant: Variant, force: bool, held: lease.Lease) -> dict:
    """Train and evaluate one variant; returns its metrics. Skips a finished one (common.status decides)."""
    prefix = sweep.variant_prefix(variant.name)
    done = store.is_complete(prefix)
    if is_current(done, variant) and not force:
        log.info("%s: already finished with config %s; skipping (use --force to retrain)", variant.name,
                 variant.config_hash)
        return {"skipped": True, **done}
    if done or force:
        store.delete_prefix(prefix)  # a stale result (another config or training revision) or --force: start clean

    with recorded_run(store, prefix, variant) as reporter:
        workdir, reporter.lease = reporter.workdir, held
        reporter.update()
        check_trainable_layers(variant)  # before any training: a bad count is exit 2 in seconds
        keras.utils.set_random_seed(variant.seed)
        tf.config.experimental.enable_op_determinism()  # a rerun with the same seed reproduces the history
        # Dataset
        data = load_data(store, sweep, variant.image_size, workdir / "tensors")
        log.info("%s: %d train / %d val / %d test images at %dpx (%.1f MB of shards)", variant.name,
                 *(data.splits[s].count for s in SPLITS), variant.image_size, data.bytes_read / 1e6)
        write_config(store, sweep, variant, data)
        # Model: the last checkpoint's, or a new one
        model, state = load_checkpoint(store, prefix, variant, len(data.classes), workdir)
        if model is None:
            model = build_model(store, variant, len(data.classes), workdir)
        else:
            log.info("%s: resuming after epoch %d", variant.name, state["epoch"])
        stopper = trial_stopper(reporter, sweep, variant)
        started = time.perf_counter()
        while not (stopper and stopper.told_to_stop(state["epoch"] if state else 0)):
            # Train this phase: EarlyStopping (from the last phase on), ReduceLROnPlateau and the store checkpoint
            # (last) after every epoch
            first, phase = state["epoch"] if state else 0, phase_at(variant, state["epoch"] if state else 0)
            early_stop = keras.callbacks.EarlyStopping(
                monitor="val_accuracy", patience=variant.early_stopping_patience, restore_best_weights=True,
                start_from_epoch=phases(variant)[-1].start)
            reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=variant.lr_factor,
                                                          patience=variant.lr_patience, min_lr=variant.min_lr)
            checkpoint = reporter.checkpoint = StoreCheckpoint(reporter, early_stop, reduce_lr, state)
            fit(model, data, variant, [SigtermStop(), early_stop, reduce_lr, checkpoint,
                                       *([stopper] if stopper else [])], initial_epoch=first, epochs=phase.end)
            checkpoint.flush()
            if phase.end >= variant.epochs or (stopper and stopper.stopped_at):
                break
            # The next phase starts exactly as a resumed run would: from the checkpoint just written
            model, state = load_checkpoint(store, prefix, variant, len(data.classes), workdir)
            log.info("%s: phase of epochs %d-%d done; next: %s backbone layers trainable", variant.name,
                     phase.start + 1, phase.end, phase_at(variant, state["epoch"]).trainable_layers)
        fit_seconds = time.perf_counter() - started
        if stopper and stopper.stopped_at:  # stopped by its search: pruned, exit 0, the checkpoint kept
            reporter.update(phase="pruned", epoch=stopper.stopped_at, finished_at=now(), exit_code=0)
            reporter.upload_log()
            return {"pruned": True, "epoch": stopper.stopped_at}
        # Evaluate on val and test with the best epoch's weights
        reporter.update(phase="evaluating")
        net = inference_model(model.net, variant)
        metrics, predictions = evaluate(net, data, variant)
        history = checkpoint.history
        best_epoch = int(early_stop.best_epoch) + 1 if early_stop.best is not None else len(history)
        metrics.update(best_epoch=best_epoch, epochs_run=len(history), config_hash=variant.config_hash,
                       dataset_fingerprint=data.fingerprint, fit_seconds=fit_seconds, bytes_read=data.bytes_read,
                       **compute(variant))
        # Publish: model, predictions, metrics, status, job.log -- and `_SUCCESS` last
        publish(reporter, net, predictions, metrics)
        return metrics


def trial_stopper(reporter: Reporter, sweep: Sweep, variant: Variant) -> TrialStopper | None:
    """A search's trial listens for its driver's verdicts after every epoch (common/search.py); others: None."""
    if not sweep.searches:
        return None
    from common.search import rungs, search_of

    search = search_of(sweep, variant.name)
    return TrialStopper(reporter, rungs(search, variant.epochs)) if search else None


def write_config(store: Store, sweep: Sweep, variant: Variant, data: Data) -> None:
    """config.json: the resolved variant, its hash, the data it trains on and where (versions, devices, and the
    precision `auto` resolved to on this device: part of what the result is)."""
    store.put_json(join(sweep.variant_prefix(variant.name), "config.json"), {
        "sweep": sweep.name, "variant": variant.model_dump(), "config_hash": variant.config_hash,
        "job": variant.job, "dataset_fingerprint": data.fingerprint, "versions": package_versions(),
        "devices": [d.name for d in tf.config.list_logical_devices()], **compute(variant),
    })


def compute(variant: Variant) -> dict:
    """The precision a variant computes in, the device kind that decided it and TensorFlow's intra-op threads
    (config.json, metrics.json): with op determinism on, a rerun is bit-identical only with all three the same --
    the threads split a CPU reduction differently (the local executor gives each of N parallel variants 1/N)."""
    threads = (int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or tf.config.threading.get_intra_op_parallelism_threads()
               or len(os.sched_getaffinity(0)))
    return {"precision": resolve_precision(variant.precision), "device_kind": device_kind(), "cpu_threads": threads}


def publish(reporter: Reporter, net: keras.Model, predictions: str, metrics: dict) -> None:
    """Write the results in the order readers rely on: everything first, `_SUCCESS` (common.status.marker) last.
    `net` is the inference model: no training-step augmentation, test-time flips if the variant has them."""
    store, prefix, variant = reporter.store, reporter.prefix, reporter.variant
    net.save(reporter.workdir / "model.keras")
    store.upload(join(prefix, "model.keras"), reporter.workdir / "model.keras")
    store.put_text(join(prefix, "predictions.csv"), predictions)
    store.put_json(join(prefix, "metrics.json"), metrics)
    log.info("%s: best epoch %d, val accuracy %.4f, test accuracy %.4f", variant.name, metrics["best_epoch"],
             metrics["val_accuracy"], metrics["test_accuracy"])
    reporter.update(phase="succeeded", finished_at=now(), exit_code=0, best_val_accuracy=metrics["val_accuracy"])
    reporter.upload_log()
    if reporter.lease:
        reporter.lease.check()
    store.mark_complete(prefix, {**marker(variant), "finished_at": now(), "val_accuracy": metrics["val_accuracy"],
                                 "test_accuracy": metrics["test_accuracy"]})
