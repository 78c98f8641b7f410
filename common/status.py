"""Variant state: the one place that decides whether a variant is finished, stale, failed or still running.

A variant is **finished** only when its `_SUCCESS` record carries the spec's current `config_hash` *and* the
current TRAINING_REVISION (`is_current`). `config_hash` follows what the spec says (only settings that differ
from the defaults count, so a new optional key leaves old results current); TRAINING_REVISION follows what the
code makes of it, so a new default or a change in training reruns the variants trained under the old behaviour.
A `_SUCCESS` that fails the rule is **stale** and is worded one way everywhere (`stale_reason`).

Training writes the record (`marker`) and skips a current one; the local and docker executor, the Kubernetes
submitter, `aquarium sweep status` and the report all read variant state through `read` / `is_finished`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from common.config import Sweep, Variant
from common.store import Store, join

TRAINING_REVISION = 4  # 2: augmentation, mixup and dropout inside the training step (issue 14); 3: frame fills
# weighted to flat colours, borders on the photo's edges (issue 13); 4: fine-tunes keep BatchNorm frozen, and
# `precision: auto` is float32 on CPUs with AMX / AVX512-BF16 too (issues 19, 24)
"""Bump by one whenever a change to the code or to a default changes what an existing config trains to (a new
default value, another augmentation, loss, optimizer or evaluation). Every `_SUCCESS` and checkpoint of an
older revision then reads as stale, and a rerun trains those variants afresh instead of skipping them.
Refactors, logging and speed-ups that leave the results the same do not bump it. (Revision 0: markers written
before the revision existed.)"""

FINISHED = "succeeded"
# succeeded | stale | failed | interrupted | running | evaluating | pending | incomplete | missing


def marker(variant: Variant) -> dict:
    """What `_SUCCESS`, status.json and checkpoint state carry so `is_current` can judge them later."""
    return {"config_hash": variant.config_hash, "training_revision": TRAINING_REVISION}


def is_current(record: dict | None, variant: Variant) -> bool:
    """THE rule: a record (a `_SUCCESS`, a checkpoint's state) counts only with the current config hash and the
    current training revision."""
    return (bool(record) and record.get("config_hash") == variant.config_hash
            and record.get("training_revision", 0) == TRAINING_REVISION)


def stale_reason(record: dict, variant: Variant) -> str:
    """The one wording of a stale result: what it was trained with, what the spec and code mean now."""
    return (f"stale: trained with config {record.get('config_hash')} at training revision "
            f"{record.get('training_revision', 0)}; now config {variant.config_hash} at revision "
            f"{TRAINING_REVISION}: rerun the variant")


def read_json(store: Store, key: str) -> dict:
    """A JSON artefact, {} when absent, {"_unreadable": why} when half-written or hand-edited (never a crash)."""
    try:
        return store.get_json(key)
    except KeyError:
        return {}
    except ValueError as e:
        return {"_unreadable": f"{store.url(key)} is not valid JSON ({e})"}


@dataclass
class VariantState:
    """What the store says about one variant: its state, status.json and the `_SUCCESS` record."""

    variant: Variant
    state: str
    status: dict = field(default_factory=dict)
    record: dict | None = None  # `_SUCCESS`, None when there is none
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    @property
    def done(self) -> str:
        """The status table's `done` column: yes / stale / no."""
        return "yes" if self.finished else ("stale" if self.state == "stale" else "no")

    @property
    def phase(self) -> str:
        """status.json's phase; marked stale when status.json itself is from another config or revision."""
        phase = str(self.status.get("phase") or "pending")
        old = self.status.get("config_hash") is not None and not is_current(self.status, self.variant)
        return f"{phase} (stale)" if old else phase


def read(store: Store, sweep: Sweep, variant: Variant) -> VariantState:
    """The state of one variant from `_SUCCESS` and status.json."""
    prefix = sweep.variant_prefix(variant.name)
    status = read_json(store, join(prefix, "status.json"))
    record = store.is_complete(prefix)
    if record is not None:
        if is_current(record, variant):
            return VariantState(variant, FINISHED, status, record)
        return VariantState(variant, "stale", status, record, stale_reason(record, variant))
    if not status:
        return VariantState(variant, "missing", error="no artefacts in the store: the variant never started")
    phase = str(status.get("phase") or "pending")
    error = str(status.get("error") or status.get("_unreadable") or "")
    if phase == FINISHED:  # status says succeeded, but `_SUCCESS` was never written
        return VariantState(variant, "incomplete", status, None,
                            error or "status says succeeded but _SUCCESS is missing: rerun the variant")
    return VariantState(variant, phase, status, None, error)


def is_finished(store: Store, sweep: Sweep, variant: Variant | str) -> bool:
    """True when the variant's `_SUCCESS` passes `is_current`: it need not (and will not) train again."""
    v = sweep.variant(variant) if isinstance(variant, str) else variant
    return is_current(store.is_complete(sweep.variant_prefix(v.name)), v)


# ---------------------------------------------------------------- the status table (`sweep status`, `sweep run`)

def parse_time(value) -> datetime | None:
    """An ISO-8601 timestamp (a trailing Z too) or datetime as an aware datetime (naive: UTC); None if unreadable."""
    if isinstance(value, datetime):
        t = value
    else:
        try:
            t = datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
        except ValueError:
            return None
    return t if t is None or t.tzinfo else t.replace(tzinfo=timezone.utc)


def _elapsed(status: dict) -> str:
    start = parse_time(status.get("started_at"))
    if start is None:
        return ""
    running = status.get("phase") in ("running", "evaluating")
    end = datetime.now(timezone.utc) if running else (parse_time(status.get("finished_at"))
                                                       or parse_time(status.get("updated_at")) or start)
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else ""


NUMBERS = ("epoch", "val acc", "best val", "elapsed")  # right-aligned columns of the status table


def status_rows(store: Store, sweep: Sweep, processes: dict[str, str] | None = None) -> list[dict]:
    """One row per variant, from the store; `processes` (variant -> what its process does) adds that column
    while the executor runs them."""
    rows = []
    for v in sweep.variants:
        seen = read(store, sweep, v)
        s = seen.status
        phase = f"pruned at epoch {s.get('epoch')}" if seen.state == "pruned" else seen.phase  # a search's trial
        row = {"variant": v.name, "phase": phase, "epoch": f"{s.get('epoch') or 0}/{s.get('epochs') or v.epochs}",
               "val acc": _fmt(s.get("val_accuracy")), "best val": _fmt(s.get("best_val_accuracy")),
               "elapsed": _elapsed(s), "done": seen.done}
        if processes is not None:
            row = {"variant": v.name, "process": processes[v.name], **{k: x for k, x in row.items() if k != "variant"}}
        rows.append(row)
    return rows
