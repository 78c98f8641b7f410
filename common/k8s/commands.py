"""The commands that read, delete and follow a sweep's Jobs without submitting anything: `aquarium sweep stop`,
`aquarium sweep logs` and `aquarium sweep status --kubernetes`."""

from __future__ import annotations

import time
from typing import Callable

from common.config import Sweep
from common.errors import BadInput, TransientError
from common.k8s.api import Apis, _call, failure_reason, job_state, list_jobs, list_pods, read_memory
from common.k8s.diagnose import _job_of
from common.k8s.manifests import CONTAINER, job_name, selector


def job_states(sweep: Sweep, apis: Apis) -> dict[str, str]:
    """State of every step ('prepare', variant names, 'aggregate') for `aquarium sweep status --kubernetes`: the
    Job's, else the one recorded before the TTL controller deleted it, else 'NotSubmitted'."""
    jobs, steps = list_jobs(sweep, apis), read_memory(sweep, apis).get("steps") or {}
    return {s: job_state(jobs[s]) if s in jobs else (steps.get(s) or {}).get("state", "NotSubmitted")
            for s in ["prepare", *sweep.names, "aggregate"]}


def stop(sweep: Sweep, apis: Apis, timeout: float = 600.0, sleep: Callable[[float], None] | None = None,
         clock: Callable[[], float] | None = None) -> list[str]:
    """Delete the sweep's Jobs in the foreground (the driver first, so it cannot recreate them) and wait until
    their pods are gone, so a resubmit never puts two pods on one variant; then its ConfigMaps. Results stay in
    the store. TransientError when pods remain after `timeout` seconds."""
    sleep, clock = sleep or time.sleep, clock or time.monotonic
    ns, deleted, start = sweep.kubernetes.namespace, set(), clock()
    while True:
        jobs = list_jobs(sweep, apis)
        for step in sorted(jobs, key=lambda s: s != "driver"):
            name = jobs[step]["metadata"]["name"]
            if not jobs[step]["metadata"].get("deletionTimestamp"):
                _call(f"delete Job {name}", apis.batch.delete_namespaced_job, name, ns,
                      propagation_policy="Foreground", missing_ok=True)
                deleted.add(name)
        pods = list_pods(sweep, apis)
        if not jobs and not pods:
            break
        if clock() - start > timeout:
            raise TransientError(f"{len(pods)} pods of sweep {sweep.name} still terminating in {ns} after "
                                 f"{timeout:.0f} s (grace period): run `aquarium sweep stop` again")
        sleep(1.0)
    res = _call("list ConfigMaps", apis.core.list_namespaced_config_map, ns, label_selector=selector(sweep)) or {}
    for cm in res.get("items") or []:
        name = cm["metadata"]["name"]
        _call(f"delete ConfigMap {name}", apis.core.delete_namespaced_config_map, name, ns, missing_ok=True)
    return sorted(deleted)


def logs(sweep: Sweep, apis: Apis, step: str, store=None) -> str:
    """A step's log: its running pod's while it runs, else the store's job.log (variants), else its last pod's."""
    job = list_jobs(sweep, apis).get(step)
    name = job_name(sweep, step)
    pods = sorted((p for p in list_pods(sweep, apis) if _job_of(p) == name),
                  key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if running or (pods and step not in sweep.names):
        pod = (running or pods)[-1]["metadata"]["name"]
        return _call(f"read the log of pod {pod}", apis.core.read_namespaced_pod_log, pod, sweep.kubernetes.namespace,
                     container=CONTAINER) or ""
    if step in sweep.names and store is not None:
        try:
            return store.get_text(f"{sweep.variant_prefix(step)}/job.log")
        except KeyError:
            pass
    state = job_state(job)
    raise BadInput(f"no log of {step} yet (Job {name}: {state}; no running pod, nothing in the store): see "
                   "`aquarium sweep status --kubernetes`")


def detached_summary(sweep: Sweep, apis: Apis) -> list[str]:
    """For `sweep status --kubernetes`: the driver Job's state and the table and problems of its last pass."""
    memory, driver = read_memory(sweep, apis), list_jobs(sweep, apis).get("driver")
    if not memory and driver is None:
        return []
    lines = [f"driver Job {job_name(sweep, 'driver')}: {job_state(driver)} {failure_reason(driver)}".rstrip()
             if driver is not None else "no driver Job (submitted from a terminal, or stopped)"]
    if memory.get("updated"):
        lines.append(f"last change seen by the submitter at {memory['updated']}:")
    lines += [memory.get("table") or ""] + [f"problem: {p}" for p in memory.get("problems") or []]
    return [line for line in lines if line]
