"""Why a step's pod does not run, with the kubelet's, scheduler's, admission's or Kueue's own message: a waiting
container (image pulls, a missing Secret), an unschedulable pod, a pod the Job cannot create, a volume that cannot
mount, a Job Kueue keeps suspended. Each is a `Problem`: one line, and whether it ends `submit` (exit 2: it cannot
resolve by itself) or is repeated at every poll (it may pass)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from common.config import Sweep
from common.k8s.api import Apis, _call, job_state, list_pods
from common.k8s.manifests import _step_of
from common.status import parse_time

KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"


@dataclass
class Problem:
    step: str
    text: str  # one line: the object, the server's or kubelet's own message, how to fix
    fatal: bool = False  # cannot resolve by itself: submit ends with exit 2
    repeat: bool = False  # may pass (a retried pull): reported at every poll


PULL = ("ErrImagePull", "ImagePullBackOff")
WAITING = PULL + ("InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError",
                  "RunContainerError")
IMAGE_GONE = re.compile(r"not found|manifest unknown|unauthorized|denied|forbidden|authorization failed|\b40[13]\b",
                        re.I)
MISSING = re.compile(r'(secrets?|configmaps?) "([^"]+)" not found|couldn\'t find key (\S+) in (Secret|ConfigMap) '
                     r'(\S+)', re.I)
IMAGE_FIX = ("fix kubernetes.image (push the image, check name and tag; a private registry needs imagePullSecrets "
             "on the ServiceAccount), then `aquarium sweep stop` and submit again")


def clip(message: str | None, limit: int = 240) -> str:
    """A server's or kubelet's message on one line of at most `limit` characters. A longer one keeps its start (what
    failed) and its end (the cause: containerd nests "failed to pull ...: failed to resolve ...: dial tcp: ...")."""
    text = " ".join((message or "").split())
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def _since(pod: dict) -> datetime | None:
    """When the pod was placed on a node (its pulls start then), else created."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "True":
            return parse_time(c.get("lastTransitionTime"))
    return parse_time((pod.get("metadata") or {}).get("creationTimestamp"))


def _missing_fix(sweep: Sweep, msg: str) -> str | None:
    """How to fix a missing Secret/ConfigMap (or key) the kubelet names, or None."""
    m = MISSING.search(msg)
    if not m:
        return None
    kind, name = (m[1], m[2]) if m[1] else (m[4], m[5].rsplit("/", 1)[-1])
    ns = sweep.kubernetes.namespace
    if kind.lower().startswith("configmap"):
        return f"the spec ConfigMap {name} is gone: run `aquarium sweep stop`, then submit again"
    return (f"create Secret {name} in namespace {ns} with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(kubectl create secret generic ...), or set kubernetes.s3_secret")


def waiting_problem(sweep: Sweep, pod: dict, now: datetime) -> Problem | None:
    """Why a container of this pod waits, from the kubelet: fatal when it cannot resolve by itself, else repeated
    at every poll and fatal after kubernetes.pull_timeout_seconds."""
    status = pod.get("status") or {}
    name, step = (pod.get("metadata") or {}).get("name", "?"), _step_of(pod) or "?"
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason, msg = waiting.get("reason"), clip(waiting.get("message"))
        if reason not in WAITING:
            continue
        head = f"pod {name}: {reason}: {msg or 'no message from the kubelet'}"
        if reason in ("InvalidImageName", "ErrImageNeverPull") or (reason in PULL and IMAGE_GONE.search(msg)):
            return Problem(step, f"{head} -- {IMAGE_FIX}", fatal=True)
        fix = _missing_fix(sweep, msg) if reason == "CreateContainerConfigError" else None
        if fix:
            return Problem(step, f"{head} -- {fix}", fatal=True)
        since, timeout = _since(pod), sweep.kubernetes.pull_timeout_seconds
        waited = (now - since).total_seconds() if since else 0.0
        if waited > timeout:
            return Problem(step, f"{head} -- still failing after {waited:.0f} s (kubernetes.pull_timeout_seconds="
                                 f"{timeout}): check the registry and the nodes' network, then `aquarium sweep stop` "
                                 "and submit again", fatal=True)
        return Problem(step, f"{head} (for {waited:.0f} s; gives up after {timeout} s)", repeat=True)
    return None


def unschedulable(pods: list[dict], now: datetime, timeout: float) -> list[tuple[str, str, float, str]]:
    """(job, pod, seconds, scheduler message) of pods Unschedulable for longer than timeout."""
    out = []
    for pod in pods:
        waited, message = _unschedulable_for(pod, now)
        if waited is not None and waited > timeout:
            meta = pod.get("metadata") or {}
            labels = meta.get("labels") or {}
            job = labels.get("job-name") or labels.get("batch.kubernetes.io/job-name", "?")
            out.append((job, meta.get("name", "?"), waited, message))
    return out


def _unschedulable_for(pod: dict, now: datetime) -> tuple[float | None, str]:
    """(seconds, scheduler message) a Pending pod has been Unschedulable, or (None, '')."""
    if (pod.get("status") or {}).get("phase") != "Pending":
        return None, ""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            since = parse_time(c.get("lastTransitionTime")) or parse_time(
                (pod.get("metadata") or {}).get("creationTimestamp"))
            return ((now - since).total_seconds() if since else 0.0), (c.get("message") or "").strip()
    return None, ""


def _latest(events: list[dict]) -> dict[str, dict]:
    """The newest event per involved object name."""
    def when(e):
        return parse_time(e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get(
            "creationTimestamp")) or datetime.min.replace(tzinfo=timezone.utc)

    out: dict[str, dict] = {}
    for e in sorted(events, key=when):
        out[(e.get("involvedObject") or {}).get("name", "")] = e
    return out


def failed_create_problem(sweep: Sweep, step: str, job: str, event: dict) -> Problem:
    """A pod the Job controller could not create (admission: missing ServiceAccount, quota, SCC, webhooks)."""
    msg = clip(event.get("message"))
    head = f"Job {job} cannot create its pod (FailedCreate): {msg}"
    if re.search(r'serviceaccounts? "[^"]+" not found', msg):
        k = sweep.kubernetes
        return Problem(step, f"{head} -- create the ServiceAccount {k.service_account}: apply k8s/rbac.yaml in "
                             f"namespace {k.namespace} (aquarium sweep plan --out DIR), or set "
                             "kubernetes.service_account", fatal=True)
    if re.search(r"runAsUser|runAsGroup|fsGroup|must be in the ranges", msg):
        return Problem(step, f"{head} -- this cluster assigns UIDs: set kubernetes.cluster_assigns_uid: true")
    return Problem(step, f"{head} -- it is retried; free or raise the quota or ask the cluster admin")


def mount_problem(sweep: Sweep, step: str, pod: str, event: dict) -> Problem:
    """A volume the kubelet cannot mount (FailedMount): fatal when the ConfigMap or Secret does not exist."""
    msg = clip(event.get("message"))
    fix = _missing_fix(sweep, msg)
    head = f"pod {pod} cannot mount a volume (FailedMount): {msg}"
    return Problem(step, f"{head} -- {fix}", fatal=True) if fix else Problem(step, head)


def kueue_problem(step: str, job: dict, workloads: list[dict], queue: str | None) -> Problem:
    """Why Kueue keeps a Job suspended: its Workload's QuotaReserved/Admitted condition."""
    name = job["metadata"]["name"]
    for wl in workloads:
        for c in (wl.get("status") or {}).get("conditions") or []:
            if c.get("type") in ("QuotaReserved", "Admitted") and c.get("status") == "False":
                return Problem(step, f"Job {name} is queued by Kueue (queue {queue}): {c.get('reason', '')}: "
                                     f"{clip(c.get('message'))}")
    return Problem(step, f"Job {name} is suspended, waiting for Kueue to admit it (queue {queue}; no Workload "
                         "condition yet): check the LocalQueue and its ClusterQueue's quota")


def _job_of(pod: dict) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")


def _creating(pod: dict) -> bool:
    """A scheduled pod whose containers are not created yet (volumes are mounted then)."""
    status = pod.get("status") or {}
    waiting = [((cs.get("state") or {}).get("waiting") or {}).get("reason")
               for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])]
    return status.get("phase") == "Pending" and (not waiting or any(r in ("ContainerCreating", "PodInitializing")
                                                                    for r in waiting))


class Watchdog:
    """Looks at the active steps' pods at every pass (`diagnose`). A pod unschedulable for longer than
    kubernetes.pending_timeout_seconds gets one warning line, once per pod (`warnings`)."""

    def __init__(self, sweep: Sweep, apis: Apis, echo: Callable[[str], None], now: Callable[[], datetime]):
        self.sweep, self.apis, self.echo, self.now = sweep, apis, echo, now
        self.ns = sweep.kubernetes.namespace
        self.reported: set[str] = set()
        self.warnings: list[str] = []

    def diagnose(self, active: dict[str, dict]) -> list[Problem]:
        """Why the active Jobs' pods do not run, at this pass: waiting containers, unschedulable pods, pods refused
        at creation, volumes that cannot mount, Jobs Kueue keeps suspended."""
        if not active:
            return []
        names = {job["metadata"]["name"]: step for step, job in active.items()}
        pods = [p for p in list_pods(self.sweep, self.apis) if _job_of(p) in names]
        now = self.now()
        problems = [p for pod in pods if (p := waiting_problem(self.sweep, pod, now))]
        problems += self._unschedulable(pods, now)
        problems += self._event_problems(active, names, pods)
        problems += [self._kueue(step, job) for step, job in active.items() if job_state(job) == "Queued"]
        return problems

    def _unschedulable(self, pods: list[dict], now: datetime) -> list[Problem]:
        """A pod the scheduler cannot place: its message in the table at once; a warning line after
        kubernetes.pending_timeout_seconds (once per pod)."""
        out, timeout = [], self.sweep.kubernetes.pending_timeout_seconds
        for pod in pods:
            waited, message = _unschedulable_for(pod, now)
            if waited is None:
                continue
            name = pod["metadata"]["name"]
            out.append(Problem(_step_of(pod) or "?", f"pod {name} unschedulable for {waited:.0f} s: {message}"))
            if waited > timeout and name not in self.reported:
                self.reported.add(name)
                line = (f"warning: pod {name} of Job {_job_of(pod)} has been unschedulable for {waited:.0f} s "
                        f"(over kubernetes.pending_timeout_seconds={timeout}): "
                        f"{message or 'no message from the scheduler'} -- free or add nodes with the requested "
                        "resources, or lower the variant's resources")
                self.warnings.append(line)
                self.echo(line)
        return out

    def _event_problems(self, active: dict[str, dict], names: dict[str, str], pods: list[dict]) -> list[Problem]:
        """FailedCreate on Jobs without pods; FailedMount on pods still creating their containers."""
        out = []
        podless = {job["metadata"]["name"] for job in active.values() if job_state(job) == "Pending"}
        if podless:
            events = self._events("involvedObject.kind=Job,reason=FailedCreate")
            out += [failed_create_problem(self.sweep, names[n], n, e) for n, e in events.items() if n in podless]
        creating = {p["metadata"]["name"]: _step_of(p) for p in pods if _creating(p)}
        if creating:
            events = self._events("involvedObject.kind=Pod,reason=FailedMount")
            out += [mount_problem(self.sweep, creating[n], n, e) for n, e in events.items() if n in creating]
        return out

    def _events(self, field_selector: str) -> dict[str, dict]:
        res = _call("list events", self.apis.core.list_namespaced_event, self.ns, field_selector=field_selector)
        return _latest((res or {}).get("items") or [])

    def _kueue(self, step: str, job: dict) -> Problem:
        uid = (job.get("metadata") or {}).get("uid")
        workloads = []
        if self.apis.custom is not None and uid:
            res = _call("list Kueue Workloads", self.apis.custom.list_namespaced_custom_object, "kueue.x-k8s.io",
                        "v1beta1", self.ns, "workloads", label_selector=f"{KUEUE_JOB_UID}={uid}", missing_ok=True)
            workloads = (res or {}).get("items") or []
        return kueue_problem(step, job, workloads, self.sweep.kubernetes.queue)
