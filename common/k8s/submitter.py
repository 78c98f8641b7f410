"""`aquarium sweep submit`: the reconcile loop. Each pass observes the cluster (the sweep's Jobs, the terminal states
recorded in the `<sweep>-state` ConfigMap) and the store (`_SUCCESS` markers), asks `common.schedule` what may
start, creates those Jobs, says why active pods do not run (common/k8s/diagnose.py) and records what it learned.
`--detach` starts the same loop in the cluster, as the driver Job.

Restart-safe: nothing is kept only in memory, so a restarted submitter -- or the driver pod -- carries on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from common import status, table
from common.config import Sweep
from common.errors import AquariumError, BadInput, TransientError
from common.k8s.api import (ACTIVE, STATE_KEY, TERMINAL, Apis, Conflict, _call, failure_reason, job_state, list_jobs,
                            read_memory)
from common.k8s.diagnose import Problem, Watchdog
from common.k8s.manifests import (CONFIG_KEY, HASH_LABEL, SWEEP_LABEL, _identity, _labels, _step_of, job_name, render,
                                  render_driver, state_name, variant_job)
from common.schedule import FAILED, PRUNED, SKIPPED, SUCCEEDED, WAITING, Decision, Schedule
from common.schedule import ACTIVE as STARTED

# a Job's state (api.job_state) -> the schedule's
CORE = {"NotSubmitted": WAITING, "Queued": STARTED, "Pending": STARTED, "Starting": STARTED, "Running": STARTED,
        "Succeeded": SUCCEEDED, "Failed": FAILED, "Skipped": SKIPPED, "Pruned": PRUNED}


@dataclass
class SubmitResult:
    states: dict[str, str]  # step -> NotSubmitted|Queued|Pending|Starting|Running|Succeeded|Failed|Skipped
    created: list[str] = field(default_factory=list)  # Job names created by this submitter
    warnings: list[str] = field(default_factory=list)  # pending-watchdog reports
    done: bool = False
    problems: list[Problem] = field(default_factory=list)  # why steps do not run, at the last pass
    exit_code: int = 3  # the schedule's: 0 every step succeeded (or was done), 1 a step failed, 3 still running


class StoreMarkers:
    """The store's `_SUCCESS` markers as the submitter sees them, re-read at every pass. A store that cannot be
    reached from here (noted once) means none known: finished variants then skip themselves in their pods."""

    def __init__(self, sweep: Sweep, store, echo: Callable[[str], None]):
        self.sweep, self.store, self.echo, self.failed = sweep, store, echo, False

    def finished(self) -> set[str]:
        """Variants whose `_SUCCESS` carries their config hash (and the training revision)."""
        try:
            if self.store is None and not self.failed:
                from common.store import open_store

                self.store = open_store(self.sweep.store, self.sweep.endpoint)
            if self.store is None:
                return set()
            return {v.name for v in self.sweep.variants if status.is_finished(self.store, self.sweep, v)}
        except (AquariumError, OSError) as e:
            if not self.failed:
                self.echo(f"note: cannot read the store {self.sweep.store} from here ({e}); finished variants will "
                          "skip themselves in their pods")
            self.failed = True
            return set()


def apply_configmap(apis: Apis, cm: dict) -> None:
    """Create the content-named, immutable spec ConfigMap unless it exists (then its data must match)."""
    name, ns = cm["metadata"]["name"], cm["metadata"]["namespace"]
    existing = _call(f"read ConfigMap {name}", apis.core.read_namespaced_config_map, name, ns, missing_ok=True)
    if existing is None:
        try:
            _call(f"create ConfigMap {name}", apis.core.create_namespaced_config_map, ns, cm)
        except Conflict:
            pass  # created meanwhile by another submitter: the same content, by its name
    elif (existing.get("data") or {}) != cm["data"]:
        raise BadInput(f"ConfigMap {name} in namespace {ns} holds another spec than its name says: delete "
                       "it (kubectl delete configmap ...) and submit again")


def check_conflicts(sweep: Sweep, jobs: dict[str, dict]) -> None:
    """A variant Job left from a different config would be mistaken for this one: refuse before any write."""
    for v in sweep.variants:
        job = jobs.get(v.name)
        old = ((job or {}).get("metadata") or {}).get("labels", {}).get(HASH_LABEL)
        if old and old != v.config_hash:
            raise BadInput(f"Job {job_name(sweep, v.name)} in namespace {sweep.kubernetes.namespace} ran config {old} "
                           f"but the spec now says {v.config_hash}: run `aquarium sweep stop --config ...` first "
                           "(results stay in the store), then submit again")


def recalled(memory: dict, step: str, identity: str | None) -> str | None:
    """A terminal state recorded for this step's current identity (its Job may have been TTL-deleted)."""
    rec = (memory.get("steps") or {}).get(step) or {}
    return rec.get("state") if rec.get("state") in ("Succeeded", "Failed") and rec.get("key") == identity else None


def write_memory(sweep: Sweep, apis: Apis, memory: dict) -> None:
    """The `<sweep>-state` ConfigMap: created once, then replaced."""
    name, ns = state_name(sweep), sweep.kubernetes.namespace
    body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {STATE_KEY: json.dumps(memory, sort_keys=True)},
            "metadata": {"name": name, "namespace": ns, "labels": _labels(sweep, "state")}}
    if _call(f"read ConfigMap {name}", apis.core.read_namespaced_config_map, name, ns, missing_ok=True) is None:
        try:
            _call(f"create ConfigMap {name}", apis.core.create_namespaced_config_map, ns, body)
            return
        except Conflict:
            pass
    _call(f"update ConfigMap {name}", apis.core.replace_namespaced_config_map, name, ns, body)


def step_table(sweep: Sweep, states: dict[str, str], jobs: dict[str, dict], problems: list[Problem],
               skipped: dict[str, str]) -> str:
    """step, job, state, detail: why it failed, why it does not run, or why it was skipped."""
    why = {}
    for p in problems:
        why.setdefault(p.step, p.text)
    rows = []
    for step in ["prepare", *sweep.names, "aggregate"]:
        state = states.get(step, "NotSubmitted")
        detail = failure_reason(jobs.get(step)) if state == "Failed" else why.get(step, "")
        if state == "Skipped" and not detail:
            detail = skipped.get(step, "")
        rows.append({"step": step, "job": job_name(sweep, step), "state": state, "detail": detail})
    return table.render(rows)


class Submitter:
    """One resolved sweep on its namespace. `reconcile()` does one pass; `run()` passes until the sweep ends.
    Restart-safe: the cluster (Jobs, the `<sweep>-state` ConfigMap) and the store's `_SUCCESS` markers, re-read at
    every pass, say what is done; what runs next is the schedule's answer."""

    def __init__(self, sweep: Sweep, manifests: list[dict], apis: Apis, store=None,
                 echo: Callable[[str], None] = print, now: Callable[[], datetime] | None = None,
                 sleep: Callable[[float], None] | None = None, driver: bool = False):
        self.sweep, self.manifests, self.apis, self.echo, self.driver = sweep, manifests, apis, echo, driver
        self.ns = sweep.kubernetes.namespace
        self.by_step = {_step_of(m): m for m in manifests[1:]}
        self.steps = ["prepare", *sweep.names, "aggregate"]
        self.markers = StoreMarkers(sweep, store, echo)
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.sleep = sleep or time.sleep
        self.schedule = Schedule(sweep.names, sweep.max_parallel or len(sweep.variants), fail_on_variant=True)
        self.watchdog = Watchdog(sweep, apis, echo, self.now)
        self.created: list[str] = []
        self.skipped: dict[str, str] = {}  # step -> why the schedule skipped it
        self._saved: dict | None = None
        self._last_table = ""
        self.search = None  # the searches' driver (common/search.py) while `run` drives them

    def add(self, variant) -> None:
        """A search's trial joins the sweep: its Job manifest, a step, a place in the schedule."""
        if variant.name not in self.sweep.names:
            self.sweep.variants.append(variant)
        cm = self.manifests[0]
        self.by_step[variant.name] = variant_job(self.sweep, variant, cm["data"][CONFIG_KEY], cm["metadata"]["name"])
        if variant.name not in self.steps:
            self.steps.insert(len(self.steps) - 1, variant.name)
        if variant.name not in self.schedule.variants:
            self.schedule.add(variant.name)

    def searching(self, states: dict[str, str]) -> None:
        """The searches' pass (report epochs, prune at rungs, tell ended trials, ask new ones); trials that ended
        pruned (their Job succeeded) or failed earlier keep that state."""
        for variant in self.search.poll({s: CORE[states[s]] for s in self.steps if self.search.owns(s)}):
            self.add(variant)
            states[variant.name] = "NotSubmitted"
        for name, ended in self.search.ended().items():
            if states.get(name) in ("NotSubmitted", "Succeeded"):
                states[name] = "Pruned" if ended == PRUNED else "Failed"

    def finished_in_store(self) -> set[str]:
        return self.markers.finished()

    def create(self, step: str, body: dict | None = None) -> None:
        """Create a step's Job; on 409 adopt the existing one only if it belongs to this sweep and step."""
        body = body or self.by_step[step]
        name = body["metadata"]["name"]
        try:
            _call(f"create Job {name}", self.apis.batch.create_namespaced_job, self.ns, body)
            self.echo(f"created Job {name}")
        except Conflict:
            existing = _call(f"read Job {name}", self.apis.batch.read_namespaced_job, name, self.ns,
                             missing_ok=True) or {}
            labels = (existing.get("metadata") or {}).get("labels") or {}
            if labels.get(SWEEP_LABEL) != self.sweep.name or _step_of(existing) != step:
                raise BadInput(f"Job {name} already exists in namespace {self.ns} and is not {step} of sweep "
                               f"{self.sweep.name} (labels {SWEEP_LABEL}={labels.get(SWEEP_LABEL)}): rename the "
                               "sweep or the variant, or delete that Job") from None
            self.echo(f"Job {name} exists already (this sweep's {step}): following it")
        self.created.append(name)

    def states(self, jobs: dict[str, dict], memory: dict) -> dict[str, str]:
        """Each step's state as observed: its Job's, else the one recorded for its identity, else NotSubmitted."""
        return {step: job_state(jobs[step]) if step in jobs else
                (recalled(memory, step, _identity(self.by_step[step])) or "NotSubmitted") for step in self.steps}

    def advance(self, states: dict[str, str]) -> Decision:
        """Ask the schedule; mark what it skips, create the Jobs it starts."""
        decision = self.schedule.decide({s: CORE[state] for s, state in states.items()}, self.finished_in_store())
        for step, why in decision.skip.items():
            states[step], self.skipped[step] = "Skipped", why
        for step in decision.start:
            self.create(step)
            states[step] = "Pending"
        return decision

    def remember(self, jobs: dict[str, dict], states: dict[str, str], problems: list[Problem]) -> None:
        """Record terminal states (with the identity they hold for) and the latest problems and table in the
        `<sweep>-state` ConfigMap, when they changed."""
        memory = {"steps": {s: {"state": states[s], "key": _identity(jobs[s])} for s in self.steps
                            if s in jobs and states[s] in ("Succeeded", "Failed")},
                  "problems": [p.text for p in problems], "driver": self.driver,
                  "table": step_table(self.sweep, states, jobs, problems, self.skipped)}
        if memory == self._saved:
            return
        previous = (read_memory(self.sweep, self.apis).get("steps") or {}) if self._saved is None else \
            self._saved["steps"]
        memory["steps"] = {**previous, **memory["steps"]}
        write_memory(self.sweep, self.apis, dict(memory, updated=self.now().isoformat()))
        self._saved = memory

    def reconcile(self) -> SubmitResult:
        """Conflicts first (before any write), then the spec ConfigMap, the states, new Jobs, the reasons."""
        jobs = list_jobs(self.sweep, self.apis)
        check_conflicts(self.sweep, jobs)
        apply_configmap(self.apis, self.manifests[0])
        states = self.states(jobs, read_memory(self.sweep, self.apis) if self._saved is None else self._saved)
        if self.search:
            self.searching(states)
        decision = self.advance(states)
        problems = self.watchdog.diagnose({s: jobs[s] for s in self.steps if s in jobs and states[s] in ACTIVE})
        self.remember(jobs, states, problems)
        self.report(problems)
        return SubmitResult(states, list(self.created), list(self.watchdog.warnings), decision.over, problems,
                            decision.exit_code)

    def report(self, problems: list[Problem]) -> None:
        """Retried pulls at every poll; the first problem that cannot resolve by itself ends submit (exit 2). The
        Jobs stay for inspection; `aquarium sweep stop` removes them."""
        for p in problems:
            if p.repeat:
                self.echo(f"warning: {p.text}")
        fatal = [p for p in problems if p.fatal]
        if fatal:
            raise BadInput(fatal[0].text)

    def run(self, watch: bool = True, max_passes: int | None = None) -> SubmitResult:
        """Reconcile until the sweep ends (or once, without watch). A sweep with searches drives them meanwhile,
        holding their lease; the trials of earlier drivers (the journal's) join first."""
        if not self.sweep.searches:
            return self._run(watch, max_passes)
        from common.search import Driver
        from common.store import open_store

        store = self.markers.store or open_store(self.sweep.store, self.sweep.endpoint)
        with Driver(store, self.sweep, self.echo) as self.search:
            for variant in self.search.known():
                self.add(variant)
            return self._run(watch, max_passes)

    def _run(self, watch: bool, max_passes: int | None) -> SubmitResult:
        passes = 0
        while True:
            result = self.reconcile()
            passes += 1
            shown = self._saved["table"] if self._saved else ""
            if shown != self._last_table:
                self.echo(shown)
                self._last_table = shown
            if result.done or not watch or (max_passes and passes >= max_passes):
                return result
            self.sleep(self.sweep.kubernetes.poll_seconds)


def submit(sweep: Sweep, config_text: str, apis: Apis, watch: bool = True, **kwargs) -> SubmitResult:
    """Render and run: the library entry for tests and scripts (the CLI renders once and checks first)."""
    return Submitter(sweep, render(sweep, config_text), apis, **kwargs).run(watch=watch)


def detach(sub: Submitter) -> str:
    """Start the driver Job (the same reconcile loop, in the cluster) and wait until its pod runs; returns its
    state. Problems of the driver pod are reported (and end it) like any step's."""
    jobs = list_jobs(sub.sweep, sub.apis)
    check_conflicts(sub.sweep, jobs)
    apply_configmap(sub.apis, sub.manifests[0])
    body = render_driver(sub.sweep, sub.manifests)
    if "driver" not in jobs or job_state(jobs["driver"]) in TERMINAL:
        if "driver" in jobs:
            raise BadInput(f"the driver Job {body['metadata']['name']} of an earlier detached submit has ended "
                           f"({job_state(jobs['driver'])}): run `aquarium sweep stop` first, then submit again")
        sub.create("driver", body)
    k, start = sub.sweep.kubernetes, sub.now()
    while True:
        job = list_jobs(sub.sweep, sub.apis).get("driver")
        state = job_state(job)
        if state in ("Running", "Succeeded"):
            return state
        if state == "Failed":
            raise BadInput(f"the driver Job {body['metadata']['name']} failed ({failure_reason(job)}): see "
                           "`aquarium sweep logs driver`")
        sub.report(sub.watchdog.diagnose({"driver": job} if job else {}))
        if (sub.now() - start).total_seconds() > k.pending_timeout_seconds + k.pull_timeout_seconds:
            raise TransientError(f"the driver Job {body['metadata']['name']} is still {state}: see "
                                 "`aquarium sweep status --kubernetes`; it keeps trying in the cluster")
        sub.sleep(k.poll_seconds)
