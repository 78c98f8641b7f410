"""What may run next in a sweep: the one place that orders its steps, applies the parallel limit and says when
the sweep is over and with what exit code. No I/O: both drivers -- the local executor (processes or `docker
run`, common/executor.py) and the Kubernetes submitter (Jobs, common/k8s/submitter.py) -- observe their steps' states
(exit codes, Jobs, the store), map them onto the states below, ask `Schedule.decide` and act on its answer.

    prepare  ->  variants (at most `capacity` active at once; finished ones skipped)  ->  aggregate

- a variant already finished in the store (current config hash and revision) is skipped, never rerun;
- a failed prepare skips everything after it and ends the sweep;
- aggregate starts once every variant has ended and at least one has a result (succeeded or skipped as
  finished); when none has, it is skipped and the sweep exits 2, as aggregate itself would (nothing to compare);
- the sweep is over when prepare failed or aggregate has ended.

Steps may be added between calls (`Schedule.add`, e.g. trials a search adds while the sweep runs), and a driver
may report a variant `pruned` (stopped early on purpose): it has ended, it is no failure, and it has no result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping

from common.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_STILL_RUNNING

WAITING = "waiting"  # not started yet
ACTIVE = "active"  # started and not ended (queued by the cluster, pulling, running, waiting to retry)
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"  # not run: finished before, or ruled out by an earlier step
PRUNED = "pruned"  # stopped early on purpose (a search): ended, not failed, no result
ENDED = (SUCCEEDED, FAILED, SKIPPED, PRUNED)
STATES = (WAITING, ACTIVE, *ENDED)

PREPARE, AGGREGATE = "prepare", "aggregate"
FINISHED = "finished in the store (same config hash)"
NO_PREPARE = "prepare failed"
NOTHING = "nothing to aggregate: no variant has a result"


@dataclass(frozen=True)
class Decision:
    """The core's answer for the states it was given."""

    start: list[str]  # steps to start now, in order
    skip: dict[str, str]  # step -> why it will not run (the driver marks it skipped)
    over: bool  # nothing will start or end any more
    exit_code: int  # what the sweep exits with if it stopped now (EXIT_STILL_RUNNING while not over)


@dataclass
class Schedule:
    """A sweep's steps: prepare, the variants in order, aggregate. `capacity`: variants active at once.
    `fail_on_variant`: a failed variant fails the sweep (exit 1) even when aggregate succeeds -- the Kubernetes
    submitter's contract, so a pipeline notices; locally the report names it and the sweep exits 0."""

    variants: list[str]
    capacity: int
    fail_on_variant: bool = False
    _known: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self):
        self.variants = list(self.variants)
        if self.capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {self.capacity}")
        self._known = set(self.variants)

    def add(self, variant: str) -> None:
        """A variant added while the sweep runs; it waits for a free slot like the others."""
        if variant in self._known or variant in (PREPARE, AGGREGATE):
            raise ValueError(f"step {variant!r} is in the sweep already")
        self.variants.append(variant)
        self._known.add(variant)

    @property
    def steps(self) -> list[str]:
        return [PREPARE, *self.variants, AGGREGATE]

    def decide(self, states: Mapping[str, str], finished: Collection[str] = (),
               codes: Mapping[str, int] | None = None) -> Decision:
        """What to start and skip now. `states`: each step's state (missing: waiting); `finished`: variants whose
        result in the store is current; `codes`: exit codes of failed steps, where the driver knows them."""
        now = {s: states.get(s, WAITING) for s in self.steps}
        unknown = {s: v for s, v in now.items() if v not in STATES}
        if unknown:
            raise ValueError(f"unknown step states: {unknown}")
        skip = {v: FINISHED for v in self.variants if now[v] == WAITING and v in finished}
        if now[PREPARE] == FAILED:
            skip.update({s: NO_PREPARE for s in self.steps[1:] if now[s] == WAITING and s not in skip})
        now.update({s: SKIPPED for s in skip})
        start = self._start(now)
        now.update({s: ACTIVE for s in start})
        variants = [now[v] for v in self.variants]
        if now[PREPARE] == SUCCEEDED and now[AGGREGATE] == WAITING and all(v in ENDED for v in variants):
            if any(v in (SUCCEEDED, SKIPPED) for v in variants):
                start.append(AGGREGATE)
                now[AGGREGATE] = ACTIVE
            else:
                skip[AGGREGATE], now[AGGREGATE] = NOTHING, SKIPPED
        over = now[PREPARE] == FAILED or now[AGGREGATE] in ENDED
        return Decision(start, skip, over, self._exit_code(now, over, codes or {}))

    def _start(self, now: dict[str, str]) -> list[str]:
        """prepare first; the waiting variants once it succeeded, as many as the free capacity allows."""
        if now[PREPARE] == WAITING:
            return [PREPARE]
        if now[PREPARE] != SUCCEEDED:
            return []
        free = self.capacity - sum(now[v] == ACTIVE for v in self.variants)
        return [v for v in self.variants if now[v] == WAITING][:max(0, free)]

    def _exit_code(self, now: dict[str, str], over: bool, codes: Mapping[str, int]) -> int:
        """A failed prepare or aggregate: its own code (1 when unknown); a failed variant: 1 where it fails the
        sweep; nothing to aggregate: 2; else 0 once over, 3 while running."""
        for step in (PREPARE, AGGREGATE):
            if now[step] == FAILED:
                return codes.get(step) or EXIT_FAILED
        if self.fail_on_variant and any(now[v] == FAILED for v in self.variants):
            return EXIT_FAILED
        if now[AGGREGATE] == SKIPPED:
            return EXIT_BAD_INPUT
        return EXIT_OK if over else EXIT_STILL_RUNNING
