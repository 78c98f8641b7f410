"""Talking to the cluster: the API groups (`Apis`), one call with a timeout (`_call`), every API failure mapped to
one error a person can act on (`api_error`: 401/403/404/422 are bad input, exit 2; outages are transient, exit 75),
and the reads the other modules share: the sweep's Jobs and pods, a Job's state, the submitter's recorded memory.

The `kubernetes` client's BatchV1Api, CoreV1Api and CustomObjectsApi are used through these methods only; tests pass
an in-memory fake with the same methods."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from common.config import Sweep
from common.errors import BadInput, TransientError
from common.k8s.manifests import _step_of, selector, state_name

REQUEST_TIMEOUT = (5, 30)  # seconds to connect and to read: a half-open connection cannot block a poll forever
STATE_KEY = "state.json"
# Job states (job_state) by what they mean for a step: ended, or started and not ended.
TERMINAL = ("Succeeded", "Failed", "Skipped")
ACTIVE = ("Queued", "Pending", "Starting", "Running")


@dataclass
class Apis:
    """The API groups the submitter uses: BatchV1Api-like `batch`, CoreV1Api-like `core`, and CustomObjectsApi-like
    `custom` (Kueue Workloads; None: not asked)."""

    batch: Any
    core: Any
    custom: Any = None


def connect() -> Apis:
    """kubeconfig (KUBECONFIG / ~/.kube/config, current context) or, inside a pod, the in-cluster config."""
    from kubernetes import client, config

    try:
        config.load_kube_config()
    except Exception as kube_err:
        try:
            config.load_incluster_config()
        except Exception:
            raise BadInput(f"no Kubernetes cluster configured ({str(kube_err).splitlines()[0]}): set KUBECONFIG "
                           "or kubectl config use-context, or run inside a pod") from None
    return Apis(client.BatchV1Api(), client.CoreV1Api(), client.CustomObjectsApi())


def _plain(obj) -> Any:
    """A client model (V1Job, ...) as the camelCase dict the API returns; dicts pass through unchanged."""
    if obj is None or isinstance(obj, (dict, list, str, int, float, bool)):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


class Conflict(Exception):
    """409: an object of that name exists already (the caller decides whether it is ours)."""


RBAC_DENIED = re.compile(r'cannot (\w+) resource "([^"]+)"')


def server_message(e: Exception) -> str:
    """The `message` of the Status the API server answered with (else the HTTP reason)."""
    try:
        message = json.loads(getattr(e, "body", None) or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return " ".join(str(message or getattr(e, "reason", None) or e).split())[:300]


def api_error(what: str, e: Exception) -> Exception | None:
    """One API failure as the error to raise: bad input (exit 2) when a person must act, transient (75) when
    waiting may help, Conflict on 409; None when `e` is not an API or connection error."""
    status = getattr(e, "status", None)
    msg = server_message(e)
    if status == 409:
        return Conflict(msg)
    if status == 401:
        return BadInput(f"Kubernetes did not accept your credentials while trying to {what} (401: {msg}): log in "
                        "again (refresh the kubeconfig's token or certificate) and retry")
    if status == 403:
        denied = RBAC_DENIED.search(msg)
        hint = (f" -- the Role lacks {denied[1]} on {denied[2]}: apply k8s/rbac.yaml (aquarium sweep plan --out DIR) "
                "and bind the aquarium-sweep-submitter Role to you") if denied else ""
        return BadInput(f"Kubernetes refused to {what} (403: {msg}){hint}")
    if status == 404:
        hint = (": create the namespace (kubectl create namespace NAME) or pass --namespace"
                if msg.startswith("namespaces ") else "")
        return BadInput(f"cannot {what}: {msg}{hint}")
    if status in (400, 422):
        return BadInput(f"Kubernetes rejected {what} as invalid ({status}): {msg}: fix the spec's kubernetes "
                        "section and check it with `aquarium sweep plan`")
    if status is not None or isinstance(e, OSError) or "urllib3" in type(e).__module__:
        return TransientError(f"Kubernetes API unavailable while trying to {what} ({status or type(e).__name__}: "
                              f"{msg}); check the cluster and retry")
    return None


def _call(what: str, fn: Callable, *args, missing_ok: bool = False, **kwargs):
    """Call the API with a request timeout. 404 is "absent" (None) only where `missing_ok` (reads, deletes)."""
    try:
        return _plain(fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs))
    except Exception as e:
        if missing_ok and getattr(e, "status", None) == 404:
            return None
        err = api_error(what, e)
        if err is None:
            raise
        raise err from None


# ---------------------------------------------------------------------------------------------- reads

def job_state(job: dict | None) -> str:
    """NotSubmitted | Queued (suspended, e.g. by Kueue) | Pending (no pod yet) | Starting (a pod, not ready: pulling,
    creating) | Running (`status.ready`) | Succeeded | Failed, from a Job."""
    if job is None:
        return "NotSubmitted"
    status = job.get("status") or {}
    conds = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    if conds & {"Complete", "SuccessCriteriaMet"} or status.get("succeeded"):
        return "Succeeded"
    if conds & {"Failed", "FailureTarget"}:
        return "Failed"
    if (job.get("spec") or {}).get("suspend"):
        return "Queued"
    if status.get("ready"):
        return "Running"
    return "Starting" if status.get("active") else "Pending"


def failure_reason(job: dict | None) -> str:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True":
            return f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return ""


def list_jobs(sweep: Sweep, apis: Apis) -> dict[str, dict]:
    """The sweep's Jobs by step: 'prepare', each variant name, 'aggregate', 'driver'."""
    res = _call("list Jobs", apis.batch.list_namespaced_job, sweep.kubernetes.namespace,
                label_selector=selector(sweep)) or {}
    return {step: job for job in res.get("items") or [] if (step := _step_of(job))}


def list_pods(sweep: Sweep, apis: Apis) -> list[dict]:
    res = _call("list pods", apis.core.list_namespaced_pod, sweep.kubernetes.namespace,
                label_selector=selector(sweep)) or {}
    return res.get("items") or []


def read_memory(sweep: Sweep, apis: Apis) -> dict:
    """What a submitter recorded in the `<sweep>-state` ConfigMap ({} if none)."""
    cm = _call(f"read ConfigMap {state_name(sweep)}", apis.core.read_namespaced_config_map, state_name(sweep),
               sweep.kubernetes.namespace, missing_ok=True)
    try:
        return json.loads(((cm or {}).get("data") or {}).get(STATE_KEY) or "{}")
    except ValueError:
        return {}
