"""The store checkpoint of a training run: after every epoch, weights + optimizer state as one .npz (the best
epoch's kept too) and state.json (epoch, steps, history, the callbacks' state) -- the commit point a killed pod
resumes from (`train.load_checkpoint`). Serialising and uploading run on a background thread, in order, so the next
epoch trains while the last one uploads.
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from common.status import marker
from common.store import join

if TYPE_CHECKING:
    from common.train import Reporter  # the run's status.json, job.log, work folder and lease

log = logging.getLogger("aquarium.train")


class StoreCheckpoint(keras.callbacks.Callback):
    """Checkpoint every epoch to the store: weights + optimizer variables as one .npz (the best epoch's is
    kept as well) and state.json (epoch, history, the callbacks' state). On resume, restore the callbacks' state.

    Keep it last in the callback list: it must see EarlyStopping's and ReduceLROnPlateau's state after they
    have handled the epoch, and restore theirs after they reset themselves in on_train_begin.
    """

    def __init__(self, reporter: Reporter, early_stop, reduce_lr, resume: dict | None = None):
        super().__init__()
        self.store, self.prefix, self.workdir = reporter.store, reporter.prefix, reporter.workdir
        self.reporter = reporter
        self.marker = marker(reporter.variant)
        self.early_stop, self.reduce_lr, self.resume = early_stop, reduce_lr, resume
        self.history = list(resume["history"]) if resume else []
        self.best_checkpoint = resume.get("best_checkpoint") if resume else None
        self.uploads = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.pending: list[concurrent.futures.Future] = []

    def on_train_begin(self, logs=None):
        """Runs after EarlyStopping/ReduceLROnPlateau reset themselves: put back their saved state."""
        if not self.resume:
            return
        for callback, state in ((self.early_stop, self.resume["early_stop"]), (self.reduce_lr,
                                                                              self.resume["reduce_lr"])):
            for key, value in state.items():
                setattr(callback, key, value)
        if self.resume.get("best_checkpoint"):
            weights = len(self.model.weights)
            self.early_stop.best_weights = load_arrays(self.workdir / self.resume["best_checkpoint"])[:weights]

    def on_epoch_end(self, epoch, logs=None):
        """Snapshot in memory (milliseconds); serialising and uploading happen on the upload thread."""
        logs = logs or {}
        lr = float(np.asarray(self.model.optimizer.learning_rate))
        row = {"epoch": epoch + 1, **{k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
               "lr": lr}
        self.history.append(row)
        snapshot = self.model.get_weights() + [v.numpy() for v in self.model.optimizer.variables]
        name = f"epoch-{epoch + 1:04d}.npz"
        if self.early_stop.best_epoch == epoch:
            self.best_checkpoint = name
        state = {
            **self.marker,
            "precision": self.model.net.dtype_policy.name,  # a resume in another precision is refused (load_checkpoint)
            "epoch": epoch + 1,
            "steps": int(self.model.optimizer.iterations),  # a new phase's optimizer counts on from here
            "checkpoint": name,
            "best_checkpoint": self.best_checkpoint,  # its weights are EarlyStopping's best_weights
            "history": list(self.history),
            "early_stop": {k: _scalar(getattr(self.early_stop, k)) for k in ("wait", "best", "best_epoch")},
            "reduce_lr": {k: _scalar(getattr(self.reduce_lr, k)) for k in ("wait", "best", "cooldown_counter")},
        }
        status = dict(epoch=epoch + 1, val_accuracy=row["val_accuracy"],
                      best_val_accuracy=max(r["val_accuracy"] for r in self.history), lr=lr)
        self.pending.append(self.uploads.submit(self._upload, snapshot, state, status))
        self._raise_upload_errors(block=False)

    def _upload(self, snapshot: list, state: dict, status: dict) -> None:
        ckpt, name = join(self.prefix, "checkpoint"), state["checkpoint"]
        save_arrays(self.workdir / name, snapshot)
        self.store.upload(join(ckpt, name), self.workdir / name)
        if self.reporter.lease:
            self.reporter.lease.check()
        self.store.put_json(join(ckpt, "state.json"), state)  # the commit point
        log.info("%s: epoch %d checkpointed", self.reporter.variant.name, state["epoch"])
        (self.workdir / name).unlink()
        keep = {name, state["best_checkpoint"]}
        for key in self.store.list(ckpt):  # other epochs are no longer needed
            if key.rsplit("/", 1)[-1].startswith("epoch-") and key.rsplit("/", 1)[-1] not in keep:
                self.store.delete(key)
        self.store.put_text(join(self.prefix, "history.csv"), history_csv(state["history"]))
        self.reporter.update(**status)

    def _raise_upload_errors(self, block: bool) -> None:
        for future in list(self.pending):
            if block or future.done():
                future.result()
                self.pending.remove(future)

    def flush(self) -> None:
        """Wait for every queued upload (also on failure or SIGTERM: the last epoch must reach the store)."""
        self._raise_upload_errors(block=True)


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    np.savez(path, **{f"a{i}": a for i, a in enumerate(arrays)})


def load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as npz:
        return [npz[f"a{i}"] for i in range(len(npz.files))]


def _scalar(value):
    """A callback's numpy scalar as a JSON number."""
    return float(value) if isinstance(value, (np.floating, float)) else (int(value) if value is not None else None)


def history_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class TrialStopper(keras.callbacks.Callback):
    """A search's trial (common/search.py): after each epoch, the driver's verdict from the store; at a rung the
    epoch's checkpoint is flushed first (the driver judges what is in the store) and the trial waits for the
    verdict. Told to stop, training ends after this epoch (`stopped_at`) and the run records `pruned`.
    Put it after the StoreCheckpoint."""

    def __init__(self, reporter: Reporter, rungs: list[int]):
        super().__init__()
        self.reporter, self.rungs, self.stopped_at = reporter, set(rungs), 0

    def told_to_stop(self, epoch: int) -> bool:
        """Already told at or before `epoch` (a pruned trial run again): it does not train on."""
        from common.search import read_verdict

        verdict = read_verdict(self.reporter.store, self.reporter.prefix)
        if verdict.get("stop") and int(verdict.get("epoch") or 0) <= epoch:
            self.stopped_at = epoch
        return bool(self.stopped_at)

    def on_epoch_end(self, epoch, logs=None):
        from common.search import read_verdict, wait_verdict

        store, prefix, done = self.reporter.store, self.reporter.prefix, epoch + 1
        if done in self.rungs:
            self.reporter.checkpoint.flush()
            verdict = wait_verdict(store, prefix, done, lambda m: log.warning("%s: %s", self.reporter.variant.name, m))
        else:
            verdict = read_verdict(store, prefix)
        if verdict.get("stop"):
            log.info("%s: stopped by its search after epoch %d", self.reporter.variant.name, done)
            self.stopped_at = done
            self.model.stop_training = True
