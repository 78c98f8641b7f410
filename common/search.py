"""Searches: trials of a search space, sampled and stopped early by Optuna, run as ordinary variants.

A search in the spec (`config.Search`) names a base variant and a space. Each trial is the base with one point of
the space: a variant named `<search>-<number>` with its own config hash, trained by the same job as any variant
(local process, `docker run`, Kubernetes Job). Under `sweeps/<sweep>/searches/<search>/` the store holds

  journal/NNNNNNNN.json  Optuna's journal (asks, per-epoch val accuracy, tells), one object per driver pass that
                         changed something; only the holder of the searches' lease appends to it
  trials/<number>.json   a trial's parameters, written once its ask is in the journal: the job reads its variant
                         from here (`with_trials`)

and each trial's variant prefix holds `verdict.json` ({"epoch", "stop"}): the driver's answer for the last epoch
it judged. A trial waits for it at every rung (`rungs`) and, told to stop, ends cleanly: state `pruned`, exit 0,
its checkpoint kept (train.py).

One driver -- `sweep run` or `sweep submit` (also the `--detach` driver pod) -- calls `Driver.poll` at every pass.
The journal is written before anything is acted on (a trial record, a verdict, a job), so a driver that restarts
replays it and carries on the same study: no trial asked twice, none lost, finished ones never retrained.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import time
from typing import Any, Callable

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import TrialState
from pydantic import BaseModel, ValidationError

from common import lease
from common.config import Search, Sweep, Variant, deep_merge
from common.errors import BadInput, TransientError
from common.schedule import ACTIVE, FAILED, PRUNED, SKIPPED, SUCCEEDED
from common.status import is_current, read_json
from common.store import Store, join

optuna.logging.set_verbosity(optuna.logging.WARNING)

RUNG_WAIT_ENV = "AQUARIUM_RUNG_WAIT_S"  # how long a trial waits at a rung for the driver's verdict
RUNG_WAIT_S = 300.0  # a waiting trial holds its pod's resources: a driver that cannot be scheduled meanwhile
# (a full cluster) or is gone must not stall it for long; a late verdict still stops it, at a later epoch


def search_prefix(sweep: Sweep, name: str) -> str:
    return join(sweep.prefix, "searches", name)


def trial_name(search: str, number: int) -> str:
    return f"{search}-{number}"


def search_of(sweep: Sweep, variant: str) -> Search | None:
    """The search a variant name is a trial of (`<search>-<number>`), or None."""
    return next((s for s in sweep.searches if re.fullmatch(rf"{re.escape(s.name)}-\d+", variant or "")), None)


# ---------------------------------------------------------------- the spec: trials as variants, strict checks

def nest(params: dict) -> dict:
    """{"augment.frame": 0.3} -> {"augment": {"frame": 0.3}}: a space's dotted keys as variant keys."""
    out: dict = {}
    for key, value in params.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def base_keys(sweep: Sweep, search: Search) -> dict:
    """The base of the trials: a variant's resolved keys (`base: NAME`, or `base: {extends: NAME, ...}` with keys
    over it, as a variant's `extends:`), or `defaults` merged with the base's own keys."""
    base = {"extends": search.base} if isinstance(search.base, str) else dict(search.base)
    if "extends" in base:
        return deep_merge(sweep.variant(base.pop("extends")).model_dump(exclude={"name"}), base)
    return deep_merge(sweep.defaults, base)


def trial_sizes(sweep: Sweep, search: Search) -> set[int]:
    """The input sizes its trials can have: the base's, or every value the space gives `image_size`."""
    p = search.space.get("image_size")
    if p is None:
        return {Variant.model_validate({**base_keys(sweep, search), "name": "base"}).image_size}
    if p.choice is not None:
        return set(p.choice)
    if p.int_range is not None:
        return set(range(p.int_range[0], p.int_range[1] + 1, p.step or 1))
    raise BadInput(f"search {search.name}.space.image_size: a continuous range: use choice or int (prepare writes "
                   "each size a trial can have)")


def trial_variant(sweep: Sweep, search: Search, number: int, params: dict) -> Variant:
    return Variant.model_validate({**deep_merge(base_keys(sweep, search), nest(params)),
                                   "name": trial_name(search.name, number)})


def distributions(search: Search) -> dict[str, Any]:
    """The space as Optuna distributions."""
    out = {}
    for key, p in search.space.items():
        if p.choice is not None:
            out[key] = CategoricalDistribution(p.choice)
        elif p.int_range is not None:
            out[key] = IntDistribution(*p.int_range, step=p.step)
        else:
            out[key] = FloatDistribution(*(p.uniform or p.loguniform), log=p.loguniform is not None)
    return out


def grid(search: Search) -> dict[str, list]:
    """Every value of each parameter, for the grid sampler (None where a range is continuous)."""
    return {k: p.choice if p.choice is not None else
            (list(range(p.int_range[0], p.int_range[1] + 1, p.step)) if p.int_range else None)
            for k, p in search.space.items()}


def _key_problem(key: str) -> str | None:
    """Why a space key is not a variant key (`name` and unknown keys; `augment.frame` style for nested ones)."""
    model: type[BaseModel] = Variant
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None or (i == 0 and part == "name"):
            return f"{key!r} is not a variant key"
        sub = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
                return f"{'.'.join(parts[:i + 1])!r} has no keys below it"
            model = sub
    return None


def rungs(search: Search, epochs: int) -> list[int]:
    """The epochs at which a trial waits for the driver's verdict: min_epochs * reduction_factor**k below
    `epochs` (Hyperband's brackets start at these epochs too)."""
    es = search.early_stopping
    if es == "none":
        return []
    out, r = [], es.min_epochs
    while r < epochs:
        out.append(r)
        r *= es.reduction_factor
    return out


def check_searches(sweep: Sweep, path: str) -> None:
    """What pydantic cannot see: the base, the space's keys and values as variants, a grid's size, trial names
    that clash with variants or make too long Job names. One error line (exit 2) naming the place."""
    seen: set[str] = set()
    for i, s in enumerate(sweep.searches):
        where = f"{path}: searches[{i}] {s.name!r}"
        if s.name in seen:
            raise BadInput(f"{where}: a second search named {s.name!r}: give each search its own name")
        seen.add(s.name)
        clash = [v for v in sweep.names if search_of(sweep, v) is s or v == s.name]
        if clash:
            raise BadInput(f"{where}: variant {clash[0]!r} has the name of this search or one of its trials "
                           f"({s.name}-<number>): rename one of them")
        parent = s.base if isinstance(s.base, str) else s.base.get("extends")
        if parent is not None and parent not in sweep.names:
            raise BadInput(f"{where}.base: no variant named {parent!r}: name one of {', '.join(sweep.names)} "
                           "or give variant keys")
        for key, param in s.space.items():
            if problem := _key_problem(key):
                raise BadInput(f"{where}.space.{key}: {problem}: use a variant key (nested: augment.frame)")
            for value in param.choice or param.uniform or param.loguniform or param.int_range:
                try:
                    trial_variant(sweep, s, 0, {key: value})
                except ValidationError as e:
                    err = e.errors()[0]
                    raise BadInput(f"{where}.space.{key}: {value!r} is not a valid value "
                                   f"({err['msg'].removeprefix('Value error, ')})") from None
        trial_sizes(sweep, s)  # a continuous image_size: one line now, not when prepare runs
        try:
            base = trial_variant(sweep, s, 0, {})
        except ValidationError as e:
            err = e.errors()[0]
            raise BadInput(f"{where}.base: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        if s.sampler == "grid":
            continuous = [k for k, values in grid(s).items() if values is None]
            if continuous:
                raise BadInput(f"{where}.space.{continuous[0]}: a grid needs a list of values, not a continuous "
                               "range: use choice or int, or sampler random or tpe")
            size = 1
            for values in grid(s).values():
                size *= len(values)
            if s.trials and s.trials > size:
                raise BadInput(f"{where}.trials: {s.trials} trials but the grid has {size} points: give at most "
                               f"{size}, or leave trials out")
            s.trials = s.trials or size
        elif s.trials is None:
            raise BadInput(f"{where}: give the number of trials (trials: N) for sampler {s.sampler}")
        if s.early_stopping != "none" and s.early_stopping.min_epochs >= base.epochs:
            raise BadInput(f"{where}.early_stopping.min_epochs: {s.early_stopping.min_epochs} is not below the "
                           f"trials' {base.epochs} epochs: nothing could be stopped early; make it smaller")
        longest = f"{sweep.name}-{trial_name(s.name, s.trials - 1)}"
        if len(longest) > 52:
            raise BadInput(f"{where}: job name {longest} is over 52 characters: shorten the search's name")


def fingerprint(sweep: Sweep, search: Search) -> str:
    """What a study's trials depend on: base, space, sampler, seed, early stopping (not trials or max_parallel,
    which may grow). Another fingerprint in the journal means the spec changed under a running study."""
    data = {"base": trial_variant(sweep, search, 0, {}).config_hash,
            **search.model_dump(include={"space", "sampler", "seed", "early_stopping"}, by_alias=True)}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- the job's side: trials from the store

def trial_records(store: Store, sweep: Sweep, search: Search) -> list[dict]:
    keys = store.list(join(search_prefix(sweep, search.name), "trials"))
    return sorted((store.get_json(k) for k in keys if k.endswith(".json")), key=lambda r: r["number"])


def with_trials(store: Store, sweep: Sweep) -> Sweep:
    """The sweep with every trial its searches have asked so far, as variants (jobs, status, aggregate)."""
    if not sweep.searches:
        return sweep
    trials = [trial_variant(sweep, s, r["number"], r["params"]) for s in sweep.searches
              for r in trial_records(store, sweep, s)]
    return sweep.model_copy(update={"variants": [*sweep.variants, *(t for t in trials if t.name not in sweep.names)]})


def read_verdict(store: Store, prefix: str) -> dict:
    return read_json(store, join(prefix, "verdict.json"))


def wait_verdict(store: Store, prefix: str, epoch: int, say: Callable[[str], None]) -> dict:
    """At a rung: the driver's verdict for `epoch` (it judges the epoch once it is in the store). A driver that
    does not answer within AQUARIUM_RUNG_WAIT_S (it is restarting, or gone) lets the trial train on."""
    deadline = time.monotonic() + float(os.environ.get(RUNG_WAIT_ENV) or RUNG_WAIT_S)
    while True:
        verdict = read_verdict(store, prefix)
        if int(verdict.get("epoch") or 0) >= epoch or verdict.get("stop"):
            return verdict
        if time.monotonic() > deadline:
            say(f"no verdict of the search's driver for epoch {epoch}: training on")
            return verdict
        time.sleep(1.0)


# ---------------------------------------------------------------- the driver's side: Optuna's study in the store

class StoreJournal(BaseJournalBackend):
    """Optuna's journal as objects in the store, read once and then kept in memory; what a pass appends goes out
    as one object at `commit`, created exclusively and only while the lease is ours (one writer, no overwrite)."""

    def __init__(self, store: Store, prefix: str, held: lease.Lease | None):
        self.store, self.prefix, self.held = store, prefix, held
        keys = sorted(k for k in store.list(prefix) if k.endswith(".json"))
        self.logs = [entry for k in keys for entry in store.get_json(k)]
        self.objects, self.pending = len(keys), []

    def read_logs(self, log_number_from: int):
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.logs.extend(logs)
        self.pending.extend(logs)

    def commit(self) -> None:
        if not self.pending:
            return
        if self.held:
            self.held.check()
        key = join(self.prefix, f"{self.objects:08d}.json")
        if not self.store.create_exclusive(key, json.dumps(self.pending).encode()):
            raise TransientError(f"{self.store.url(key)} was written by another driver: this one stops; run the "
                                 "sweep again to carry on from the journal")
        self.objects, self.pending = self.objects + 1, []


def sampler(search: Search, number: int) -> optuna.samplers.BaseSampler:
    """A sampler for trial `number`, seeded by (seed, number): the same trials after a restart, whatever the
    sampler's own random state was (grid: the grid's order is the seed's, point `number` for trial `number`)."""
    seed = search.seed * 100003 + number
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(grid(search), seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def pruner(search: Search, epochs: int) -> optuna.pruners.BasePruner:
    es = search.early_stopping
    if es == "none":
        return optuna.pruners.NopPruner()
    if es.method == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=es.min_epochs, max_resource=epochs,
                                              reduction_factor=es.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=es.min_epochs, reduction_factor=es.reduction_factor,
                                                  min_early_stopping_rate=0)


def history(store: Store, prefix: str) -> list[tuple[int, float]]:
    """(epoch, val accuracy) of every finished epoch of a variant, from its history.csv."""
    try:
        rows = csv.DictReader(io.StringIO(store.get_text(join(prefix, "history.csv"))))
        return [(int(r["epoch"]), float(r["val_accuracy"])) for r in rows]
    except (KeyError, ValueError):
        return []


class SearchRun:
    """One search's study, replayed from its journal: what the driver asks, reports and tells for it."""

    def __init__(self, store: Store, sweep: Sweep, search: Search, held: lease.Lease | None):
        self.store, self.sweep, self.search = store, sweep, search
        self.epochs = trial_variant(sweep, search, 0, {}).epochs
        self.journal = StoreJournal(store, join(search_prefix(sweep, search.name), "journal"), held)
        self.study = optuna.create_study(storage=JournalStorage(self.journal), study_name=search.name,
                                         direction="maximize", pruner=pruner(search, self.epochs),
                                         load_if_exists=True)
        mine, theirs = fingerprint(sweep, search), self.study.user_attrs.get("fingerprint")
        if theirs is None:
            self.study.set_user_attr("fingerprint", mine)
        elif theirs != mine:
            raise BadInput(f"search {search.name!r} changed (base, space, sampler, seed or early stopping) since its "
                           f"trials began: rename the search to start another, or delete "
                           f"{store.url(search_prefix(sweep, search.name))} to start it over")
        self.judged: dict[int, int] = {}  # trial number -> the epoch of the last verdict written by this driver
        self.outbox: list[tuple[str, dict]] = []  # (key, object) to write once the journal is committed

    def trials(self, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states or None)

    def variant(self, t: optuna.trial.FrozenTrial) -> Variant:
        return trial_variant(self.sweep, self.search, t.number, t.params)

    def prefix(self, t: optuna.trial.FrozenTrial) -> str:
        return self.sweep.variant_prefix(trial_name(self.search.name, t.number))

    def record(self, t: optuna.trial.FrozenTrial) -> None:
        key = join(search_prefix(self.sweep, self.search.name), "trials", f"{t.number}.json")
        self.outbox.append((key, {"name": trial_name(self.search.name, t.number), "number": t.number,
                                  "params": t.params, "config_hash": self.variant(t).config_hash}))

    def verdict(self, t: optuna.trial.FrozenTrial, epoch: int, stop: bool) -> None:
        self.outbox.append((join(self.prefix(t), "verdict.json"), {"epoch": epoch, "stop": stop}))
        self.judged[t.number] = epoch

    def observe(self, t: optuna.trial.FrozenTrial) -> bool:
        """Report a running trial's new epochs; at a rung Optuna's pruner decides. True when it was pruned."""
        status = read_json(self.store, join(self.prefix(t), "status.json"))
        epoch = int(status.get("epoch") or 0) if is_current(status, self.variant(t)) else 0
        reported = max(t.intermediate_values, default=0)
        if epoch > reported:
            trial = optuna.trial.Trial(self.study, t._trial_id)
            for step, value in history(self.store, self.prefix(t)):
                if step <= reported:
                    continue
                trial.report(value, step)
                reported = step
                if step in rungs(self.search, self.epochs) and trial.should_prune():
                    self._tell(t.number, TrialState.PRUNED)
                    self.verdict(t, step, True)
                    return True
        if reported and self.judged.get(t.number) != reported:
            self.verdict(t, reported, False)
        return False

    def ended(self, t: optuna.trial.FrozenTrial, state: str) -> None:
        """Tell the study how a trial ended: its result (val accuracy of its best epoch), pruned, or failed."""
        record = self.store.is_complete(self.prefix(t))
        status = read_json(self.store, join(self.prefix(t), "status.json"))
        if state in (SUCCEEDED, SKIPPED) and is_current(record, self.variant(t)):
            trial = optuna.trial.Trial(self.study, t._trial_id)
            for step, value in history(self.store, self.prefix(t)):
                if step not in t.intermediate_values:
                    trial.report(value, step)
            self._tell(t.number, TrialState.COMPLETE, float(record["val_accuracy"]))
        elif status.get("phase") == "pruned" or state == PRUNED:
            self._tell(t.number, TrialState.PRUNED)
        elif state == SKIPPED:  # not run (prepare failed): it stays asked and runs when the sweep runs again
            return
        else:
            self._tell(t.number, TrialState.FAIL)

    def _tell(self, number: int, state: TrialState, value: float | None = None) -> None:
        try:
            self.study.tell(number, value, state=state)
        except RuntimeError:  # GridSampler calls study.stop() when the grid is done: only allowed inside optimize
            pass

    def ask(self) -> optuna.trial.FrozenTrial:
        """A new trial, from a sampler seeded by its number (`sampler`)."""
        self.study.sampler = sampler(self.search, len(self.trials()))
        trial = self.study.ask(distributions(self.search))
        return self.study.get_trials(deepcopy=False)[trial.number]

    def poll(self, states: dict[str, str]) -> list[Variant]:
        """One pass: report and judge the active trials, tell the ended ones, ask new ones up to max_parallel and
        trials; then commit the journal and only then write records and verdicts. Returns the new trials."""
        for t in self.trials(TrialState.RUNNING):
            state = states.get(trial_name(self.search.name, t.number))
            if state == ACTIVE:
                self.observe(t)
            elif state in (SUCCEEDED, SKIPPED, FAILED, PRUNED):
                self.ended(t, state)
        new = []
        limit = self.search.max_parallel or self.search.trials
        while len(self.trials()) < self.search.trials and len(self.trials(TrialState.RUNNING)) < limit:
            t = self.ask()
            self.record(t)
            new.append(self.variant(t))
        self.journal.commit()
        for key, obj in self.outbox:
            self.store.put_json(key, obj)
        self.outbox = []
        return new


class Driver:
    """The searches of one sweep, driven by whoever drives the sweep (`sweep run`, `sweep submit`, the detached
    driver pod). Use it as a context manager: it holds the searches' lease while it drives."""

    def __init__(self, store: Store, sweep: Sweep, say: Callable[[str], None] = print):
        self.store, self.sweep, self.say = store, sweep, say
        self._stack = contextlib.ExitStack()
        self.runs: dict[str, SearchRun] = {}

    def __enter__(self) -> Driver:
        held = self._stack.enter_context(lease.held(self.store, join(self.sweep.prefix, "searches"),
                                                    f"searches of sweep {self.sweep.name}", self.say))
        try:
            self.runs = {s.name: SearchRun(self.store, self.sweep, s, held) for s in self.sweep.searches}
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def known(self) -> list[Variant]:
        """Every trial asked so far (the journal's), re-recorded in the store in case a driver died between its
        ask and the record; pruned trials get their stop verdict again (it may not have been written)."""
        out = []
        for run in self.runs.values():
            for t in run.trials():
                if t.state == TrialState.RUNNING:
                    run.record(t)
                if t.state == TrialState.PRUNED:
                    run.verdict(t, max(t.intermediate_values, default=0), True)
                out.append(run.variant(t))
            for key, obj in run.outbox:
                self.store.put_json(key, obj)
            run.outbox = []
        return out

    def owns(self, variant: str) -> bool:
        return search_of(self.sweep, variant) is not None

    def stopped(self, variant: str) -> bool:
        """A trial whose job ended because its search stopped it (status.json says pruned)."""
        return self.owns(variant) and read_json(self.store, join(self.sweep.variant_prefix(variant),
                                                                 "status.json")).get("phase") == "pruned"

    def ended(self) -> dict[str, str]:
        """Trials that ended in an earlier pass or run: name -> pruned | failed (their steps must not start)."""
        words = {TrialState.PRUNED: PRUNED, TrialState.FAIL: FAILED}
        return {trial_name(name, t.number): words[t.state] for name, run in self.runs.items()
                for t in run.trials(TrialState.PRUNED, TrialState.FAIL)}

    def poll(self, states: dict[str, str]) -> list[Variant]:
        """One pass over every search (`SearchRun.poll`); the new trials, which the caller adds to its sweep."""
        new = [v for run in self.runs.values() for v in run.poll(states)]
        for v in new:
            self.say(f"{v.name}: asked by search {search_of(self.sweep, v.name).name} ({summary(v, self.sweep)})")
        return new


def param_values(variant: Variant, search: Search) -> dict:
    """A trial's point of the space: {"learning_rate": 0.0031, "augment.frame": 0.3}."""
    out = {}
    for key in search.space:
        value = variant.model_dump()
        for part in key.split("."):
            value = value[part]
        out[key] = value
    return out


def summary(variant: Variant, sweep: Sweep) -> str:
    """A trial's parameters, short: `learning_rate=0.0031, augment.frame=0.3`."""
    values = param_values(variant, search_of(sweep, variant.name)).items()
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)
