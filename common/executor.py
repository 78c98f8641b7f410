"""Running a sweep: the same job command lines whether a pod, a `docker run` or a local process runs them."""

from __future__ import annotations

from common.config import Sweep


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


def steps(sweep: Sweep) -> list[tuple[str, str | None]]:
    """The sweep's steps in order: prepare, one per variant (these may run in parallel), aggregate."""
    return [("prepare", None)] + [(v.job, v.name) for v in sweep.variants] + [("aggregate", None)]
