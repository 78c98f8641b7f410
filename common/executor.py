"""Running a sweep: the same job command lines whether a pod, a `docker run` or a local process runs them.

On one machine (`aquarium sweep run`) every step is a separate process -- prepare, then the variants up to
`max_parallel` at a time, then aggregate, in the order `common.schedule` answers -- and the steps talk only
through the store, exactly as pods do. This module only starts, watches and stops the processes.
A process per variant isolates TensorFlow's memory and lets a crashed variant fail alone. Progress comes from
the variants' own status.json in the store, so `sweep status` in another terminal shows the same table.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from common.config import Sweep, Variant
from common.data.source import resolve_local
from common import lease
from common.errors import EXIT_INTERRUPTED, EXIT_TRANSIENT, AquariumError, BadInput, from_os_error
from common.schedule import (ACTIVE, AGGREGATE, FAILED, FINISHED, PREPARE, PRUNED, SKIPPED, SUCCEEDED, WAITING,
                             Decision, Schedule)
from common.status import NUMBERS, is_finished, status_rows
from common.store import FileStore, Store, join, open_store
from common.table import Screen, render

TERM_GRACE_S = 120  # a variant needs a moment after SIGTERM to checkpoint its last epoch
RETRY_BASE_S, RETRY_CAP_S = 10.0, 360.0  # Kubernetes' pod backoff: 10 s, doubled per retry, at most 6 min
# a step's state here -> the schedule's (a step waiting out its retry backoff keeps its slot: active)
CORE = {"queued": WAITING, "running": ACTIVE, "retrying": ACTIVE, "ok": SUCCEEDED, "failed": FAILED,
        "skipped": SKIPPED, "pruned": PRUNED}


def retry_delay(attempt: int) -> float:
    """Seconds before retry `attempt` (1, 2, ...) of a job that exited 75, as a Job's backoffLimit spaces them."""
    return min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt - 1))


def job_argv(sweep: Sweep, job: str, config_path: str, variant: str | None = None,
             store: str | None = None, source: str | None = None) -> list[str]:
    """The `aquarium` arguments of one step of a sweep. Local processes, `docker run` and the Kubernetes Job
    templates all call this, so every way of running executes exactly the same command."""
    argv = [job, "--config", config_path]
    if variant:
        argv += ["--variant", variant]
    if store:
        argv += ["--store", store]
    if source and job == "prepare":
        argv += ["--source", source]
    return argv


def sweep_steps(sweep: Sweep) -> list[tuple[str, str | None]]:
    """The sweep's steps in order: prepare, one per variant (these may run in parallel), aggregate."""
    return [("prepare", None)] + [(v.job, v.name) for v in sweep.variants] + [("aggregate", None)]


# ---------------------------------------------------------------- machine and command lines

def gpu_ids() -> list[str]:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what `nvidia-smi -L` lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_parallel(sweep: Sweep, gpus: int, cpus: int) -> int:
    """One variant per GPU; without GPUs one per two cores (TensorFlow uses several). The spec caps it."""
    n = gpus if gpus else max(1, cpus // 2)
    return min(n, sweep.max_parallel) if sweep.max_parallel else n


def local_argv(argv: list[str]) -> list[str]:
    """A job as a local process of this very interpreter (the virtualenv that runs the sweep)."""
    return [sys.executable, "-m", "jobs.cli", *argv]


# the project's own settings a job reads from its environment: ImageNet weights without a download, what
# `precision: auto` means (README: *Pretrained weights without a download*, *Precision*)
PASSED_SETTINGS = ("AQUARIUM_WEIGHTS", "AQUARIUM_PRECISION")


def docker_argv(image: str, argv: list[str], store_uri: str, config_path: str, source: str | None = None,
                env: dict[str, str] | None = None, gpu: str | None = None,
                extra_env: dict[str, str] | None = None) -> list[str]:
    """`docker run` of one job. AWS_* variables and the PASSED_SETTINGS are passed by name (values never appear in
    `ps`); a local AQUARIUM_WEIGHTS folder is mounted read-only at its own path; a file://
    store, the config and a local source zip are mounted at the same absolute paths the argv names, and the
    container runs as the calling user so files it writes into a local store stay the user's."""
    env = os.environ if env is None else env
    cmd = ["docker", "run", "--rm", "--network", "host"]
    for name in sorted(k for k in env if k.startswith("AWS_") or k in PASSED_SETTINGS):
        cmd += ["-e", name]
    weights = env.get("AQUARIUM_WEIGHTS", "")
    if weights and not weights.startswith("s3://") and Path(weights).is_dir():  # a local folder: the same path inside
        cmd += ["-v", f"{Path(weights).resolve()}:{Path(weights).resolve()}:ro"]
    for name, value in sorted((extra_env or {}).items()):
        cmd += ["-e", f"{name}={value}"]
    if gpu is not None:
        cmd += ["--gpus", f"device={gpu}"]
    if store_uri.startswith("file://"):
        folder = store_uri[len("file://"):]
        cmd += ["-v", f"{folder}:{folder}", "--user", f"{os.getuid()}:{os.getgid()}"]
    cmd += ["-v", f"{config_path}:{config_path}:ro"]
    if source and Path(source).is_file():
        cmd += ["-v", f"{source}:{source}:ro"]
    return cmd + [image, *argv]


def log_dir(store: Store, sweep: Sweep) -> Path:
    """Where the processes' stdout/stderr go: beside a local store, else ./logs (the store keeps job.log).
    Created here, before any job starts, so a folder that cannot hold logs is one error line, not a traceback."""
    folder = store.root / "logs" / sweep.name if isinstance(store, FileStore) else Path("logs").resolve() / sweep.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise from_os_error(e, f"log folder {folder}", "use a --store folder (for s3://: a working directory) "
                                                       "you can write to") from None
    return folder


# ---------------------------------------------------------------- running

@dataclass
class Step:
    """One job process of the sweep and what the executor knows about it."""

    job: str
    variant: str | None
    argv: list[str]
    log: Path
    state: str = "queued"  # queued | skipped | running | retrying | ok | failed | pruned (CORE: the schedule's)
    returncode: int | None = None
    started: float | None = None
    ended: float | None = None
    slot: int | None = None
    retries: int = 0  # restarts after a transient exit (75)
    retry_at: float = 0.0  # monotonic time before which a retry does not start
    why: str = ""  # why the schedule skipped it
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.variant or self.job

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started if self.started else 0.0

    def log_file(self) -> TextIO:
        """The log, opened for appending; a disk full or a vanished folder is one error line."""
        try:
            return open(self.log, "a")
        except OSError as e:
            raise from_os_error(e, f"log folder {self.log.parent}", "use a --store folder you can write to") from None

    def error_line(self) -> str:
        """The job's own one-line error (what, where, how to fix), read back from its log."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line for line in lines if line.startswith("error: ")]
        return f": {errors[-1][len('error: '):]}" if errors else ""

    def describe(self) -> str:
        if self.state == "running":
            return f"running {self.seconds:.0f}s"
        if self.state in ("ok", "failed"):
            return f"exit {self.returncode}"
        if self.state == "retrying":
            return f"retry {self.retries} in {max(0.0, self.retry_at - time.monotonic()):.0f}s"
        return self.state


@dataclass
class SweepRun:
    """What happened: every step with its times and exit code; `exit_code` is what the command exits with."""

    steps: list[Step]
    wall_seconds: float
    exit_code: int
    parallel: int


class Terminated(Exception):
    """SIGTERM reached the executor: children get SIGTERM too and save their progress."""


def local_source(sweep: Sweep, config_path: str) -> str:
    """The dataset source for prepare's argv: a local zip as an absolute path (found beside the spec when it
    is relative), so a docker container can mount it at the same place; any other source unchanged."""
    path = resolve_local(sweep.dataset.source, Path(config_path).resolve().parent)
    return str(path.resolve()) if path is not None and path.is_file() else sweep.dataset.source


class Progress:
    """What the sweep shows while it runs and when it ends: the status table from the store (redrawn on a
    terminal, one line per change otherwise), one line per event, and the summary."""

    def __init__(self, sweep: Sweep, store: Store, out: TextIO | None, interval: float):
        self.sweep, self.store, self.interval = sweep, store, interval
        self.screen = Screen(out or sys.stdout)
        self.last_draw, self.last_rows, self.table, self.table_error = 0.0, {}, [], ""

    def say(self, text: str) -> None:
        self.screen.say(text)

    def rows(self, variants: list[Step]) -> list[dict]:
        """The status table from the store; while the store cannot be reached, the last one read."""
        try:
            self.table = status_rows(self.store, self.sweep, {s.variant: s.describe() for s in variants})
        except AquariumError as e:  # said once per outage; the jobs themselves retry or fail on their own
            if not self.table_error:
                self.say(f"status table not updated while the store is unreachable: {e}")
            self.table_error = str(e)
            return self.table
        self.table_error = ""
        return self.table

    def draw(self, variants: list[Step], force: bool = False) -> None:
        """Terminal: redraw the table every `interval` s. Otherwise: one line per variant whose state changed."""
        now = time.monotonic()
        if not force and now - self.last_draw < self.interval:
            return
        self.last_draw = now
        rows = self.rows(variants)
        if self.screen.tty:
            self.screen.draw(rows, NUMBERS)
            return
        for r in rows:
            key = (r["phase"], r["epoch"], r["process"].split(" ")[0], r["done"])
            if self.last_rows.get(r["variant"]) != key:
                self.last_rows[r["variant"]] = key
                self.say(f"{time.strftime('%H:%M:%S')} {r['variant']}: {r['process']}, phase {r['phase']}, epoch "
                         f"{r['epoch']}, val acc {r['val acc'] or '-'}, best val {r['best val'] or '-'}")

    def started(self, step: Step) -> None:
        self.say(f"{step.variant}: started ({step.job}, log {step.log})" if step.variant else
                 f"{step.name}: starting (log {step.log})")

    def ended(self, step: Step) -> None:
        if step.state == "pruned":
            self.say(f"{step.variant}: pruned after {step.seconds:.0f}s (stopped early by its search)")
            return
        ok, see = step.state == "ok", "" if step.state == "ok" else f"; see {step.log}"
        if step.variant:
            self.say(f"{step.variant}: {'finished' if ok else 'FAILED'} after {step.seconds:.0f}s "
                     f"(exit {step.returncode}){see}")
        else:
            self.say(f"{step.name}: {'done' if ok else 'FAILED'} in {step.seconds:.1f}s (exit {step.returncode}){see}")

    def summary(self, steps: dict[str, Step]) -> None:
        prepare, aggregate = steps[PREPARE], steps[AGGREGATE]
        variants = [s for s in steps.values() if s.variant]
        self.say(render(self.rows(variants), NUMBERS))
        failed = [s for s in variants if s.state == "failed"]
        skipped = [s.variant for s in variants if s.why == FINISHED]
        if skipped:
            self.say(f"skipped (already finished): {', '.join(skipped)}")
        for s in failed:
            self.say(f"variant failed: {s.variant} (exit {s.returncode}){s.error_line()}; log {s.log}")
        if prepare.state == "failed":
            self.say(f"prepare failed (exit {prepare.returncode}){prepare.error_line()}; variants not run; "
                     f"log {prepare.log}")
        elif aggregate.state == "failed":
            self.say(f"aggregate failed (exit {aggregate.returncode}){aggregate.error_line()}; log {aggregate.log}")
        elif aggregate.state == "skipped":
            self.say(f"aggregate not run: {aggregate.why}")
        elif aggregate.state == "ok":
            report = self.store.url(join(self.sweep.prefix, "report", "report.html"))
            self.say(f"sweep {self.sweep.name}: {len(variants) - len(failed)}/{len(variants)} variants ok; "
                     f"report {report}")


class Executor:
    """Runs one resolved sweep (`config.resolve`): its store, source, image and endpoint are the sweep's. It
    starts, watches and stops processes; what runs when is `common.schedule`'s answer."""

    def __init__(self, sweep: Sweep, config_path: str, kind: str = "local", parallel: int | None = None,
                 out: TextIO | None = None, interval: float = 2.0):
        if kind not in ("local", "docker"):
            raise BadInput(f"--executor {kind!r}: use local or docker")
        if kind == "docker" and not shutil.which("docker"):
            raise BadInput("--executor docker needs the docker CLI on PATH: install Docker or use --executor local")
        self.sweep, self.kind = sweep, kind
        self.store = open_store(sweep.store, sweep.endpoint)
        self.config_path = str(Path(config_path).resolve())
        self.source = local_source(sweep, config_path)
        self.gpus, self.cpus = gpu_ids(), cpu_count()
        self.parallel = parallel or default_parallel(sweep, len(self.gpus), self.cpus)
        self.live = Progress(sweep, self.store, out, interval)
        self.logs = log_dir(self.store, sweep)
        self.retries = sweep.kubernetes.backoff_limit  # as many restarts after exit 75 as a Job gets
        self.run_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.schedule, self._finished = Schedule(sweep.names, self.parallel), None
        self.search = None  # the searches' driver (common/search.py) while `run` drives them

    def step(self, job: str, variant: str | None) -> Step:
        argv = job_argv(self.sweep, job, self.config_path, variant, self.store.uri, self.source)
        return Step(job, variant, argv, self.logs / f"{variant or job}.log")

    def command(self, step: Step) -> tuple[list[str], dict[str, str]]:
        """The process to start and its environment: the GPU of its slot, or a fair share of the CPU threads."""
        extra = {lease.OWNER_ENV: f"{self.run_id}/{step.name}"}  # its retries take their own lease back at once
        gpu = self.gpus[step.slot % len(self.gpus)] if self.gpus and step.slot is not None else None
        if gpu is not None:
            extra["CUDA_VISIBLE_DEVICES"] = gpu
        elif step.variant and "TF_NUM_INTRAOP_THREADS" not in os.environ:
            extra["TF_NUM_INTRAOP_THREADS"] = str(max(1, self.cpus // self.parallel))
        if self.kind == "docker":
            threads = {k: v for k, v in extra.items() if k != "CUDA_VISIBLE_DEVICES"}
            return docker_argv(self.sweep.kubernetes.image, step.argv, self.store.uri, self.config_path,
                               self.source, gpu=gpu, extra_env=threads), dict(os.environ)
        return local_argv(step.argv), {**os.environ, **extra}

    def start(self, step: Step, slot: int | None = None) -> None:
        step.slot = slot
        cmd, env = self.command(step)
        with step.log_file() as log:
            log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n")
            log.flush()
            # own session: Ctrl-C reaches the executor only, which then stops the children gracefully
            step.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        # a retry keeps the first start: the step's time includes its failed attempts and backoff waits
        step.state, step.started, step.ended = "running", step.started or time.monotonic(), None

    def reap(self, step: Step) -> bool:
        """True once the step's process has ended for good (and records how). A transient exit (75) with
        retries left is not the end: the step is queued again after a backoff and resumes from its checkpoint."""
        if step.proc is None or step.proc.poll() is None:
            return False
        step.returncode, step.ended, step.proc = step.proc.returncode, time.monotonic(), None
        if step.returncode == EXIT_TRANSIENT and step.retries < self.retries:
            step.retries += 1
            step.state, step.retry_at = "retrying", time.monotonic() + retry_delay(step.retries)
            self.live.say(f"{step.name}: transient failure (exit 75){step.error_line()}; retry {step.retries} of "
                          f"{self.retries} in {retry_delay(step.retries):.0f}s, resuming from its checkpoint")
            return False
        step.state = "ok" if step.returncode == 0 else "failed"
        if step.state == "ok" and self.search and self.search.stopped(step.variant):
            step.state = "pruned"
        return True

    def finished(self, steps: dict[str, Step]) -> set[str]:
        """The variants whose current result is in the store, read once prepare has succeeded."""
        if self._finished is None and steps[PREPARE].state == "ok":
            self._finished = {v.name for v in self.sweep.variants if is_finished(self.store, self.sweep, v.name)}
        return self._finished or set()

    def act(self, steps: dict[str, Step], decision: Decision) -> None:
        """Mark what the schedule skips; start what it starts, a variant in the lowest free slot."""
        for name, why in decision.skip.items():
            steps[name].state, steps[name].why = "skipped", why
            if why == FINISHED:
                self.live.say(f"{name}: skipped (already finished with config "
                              f"{self.sweep.variant(name).config_hash})")
        for name in decision.start:
            step = steps[name]
            busy = {s.slot for s in steps.values() if s.variant and s.state in ("running", "retrying")}
            self.start(step, min(set(range(self.parallel)) - busy) if step.variant else None)
            self.live.started(step)

    def loop(self, steps: dict[str, Step]) -> Decision:
        """Observe (reap and retry the processes), ask the schedule, act; until the sweep is over."""
        while True:
            for s in list(steps.values()):
                if s.state == "retrying" and time.monotonic() >= s.retry_at:  # backoff over: again, same slot
                    self.start(s, s.slot)
                if self.reap(s):
                    self.live.ended(s)
            if self.search:  # report epochs, prune at rungs, tell ended trials, ask new ones (they queue)
                for variant in self.search.poll({n: CORE[s.state] for n, s in steps.items() if self.search.owns(n)}):
                    add_trial(self, steps, variant)
            variants = [s for s in steps.values() if s.variant]
            codes = {n: s.returncode for n, s in steps.items() if s.state == "failed"}
            decision = self.schedule.decide({n: CORE[s.state] for n, s in steps.items()}, self.finished(steps),
                                            codes)
            self.act(steps, decision)
            if decision.over:
                return decision
            if steps[PREPARE].state == "ok":
                self.live.draw(variants, force=AGGREGATE in decision.start)
            time.sleep(0.25)

    def run(self) -> SweepRun:
        from common.search import Driver  # a sweep with searches drives them, holding their lease

        with Driver(self.store, self.sweep, self.live.say) if self.sweep.searches else contextlib.nullcontext() as \
                self.search:
            return self._run()

    def _run(self) -> SweepRun:
        t0 = time.monotonic()
        steps = {variant or job: self.step(job, variant) for job, variant in sweep_steps(self.sweep)}
        if self.search:  # the trials of earlier runs: resumed, skipped when finished, or ended as they were
            ended = self.search.ended()
            for variant in self.search.known():
                add_trial(self, steps, variant, ended.get(variant.name, "queued"))
        self.live.say(f"sweep {self.sweep.name}: {len(self.sweep.variants)} variants, {self.parallel} at a time, "
                      f"{self.kind} executor, store {self.store.uri}")
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            with self.live.screen:
                decision = self.loop(steps)
        except (KeyboardInterrupt, Terminated):
            self.live.say("interrupted: stopping the running jobs (they save a checkpoint; rerun to resume)")
            self.stop(list(steps.values()))
            return SweepRun(list(steps.values()), time.monotonic() - t0, EXIT_INTERRUPTED, self.parallel)
        except AquariumError:  # e.g. the log folder filled up: stop the children before the one error line
            self.stop(list(steps.values()))
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.live.summary(steps)
        return SweepRun(list(steps.values()), time.monotonic() - t0, decision.exit_code, self.parallel)

    def stop(self, all_steps: list[Step]) -> None:
        """Stop every running child (`terminate`) and record how each ended."""
        running = [s for s in all_steps if s.proc is not None and s.proc.poll() is None]
        terminate([s.proc for s in running])
        for s in running:
            self.reap(s)


def terminate(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each child's process group (they checkpoint and exit 143), SIGKILL after a grace period."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):  # it may have just exited
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE_S
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def add_trial(executor: Executor, steps: dict[str, Step], variant: Variant, state: str = "queued") -> None:
    """A search's trial joins the executor's sweep: a step, a place in the schedule and in the status table."""
    if variant.name not in executor.sweep.names:
        executor.sweep.variants.append(variant)
    steps[variant.name] = executor.step(variant.job, variant.name)
    steps[variant.name].state = state
    if variant.name not in executor.schedule.variants:
        executor.schedule.add(variant.name)


def _raise_terminated(signum, frame):
    raise Terminated()


def run_sweep(sweep: Sweep, config_path: str, kind: str = "local", max_parallel: int | None = None,
              out: TextIO | None = None, interval: float = 2.0) -> SweepRun:
    """prepare -> variants (in parallel) -> aggregate on this machine, everything through the resolved sweep's
    store (`config.resolve` applied the command line's --store, --source and --image)."""
    return Executor(sweep, config_path, kind, max_parallel, out, interval).run()
