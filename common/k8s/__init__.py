"""The sweep on Kubernetes. `jobs/sweep.py` imports this package only; each module decides one thing:

    manifests   what the cluster gets: k8s/job.yaml filled from the resolved spec (`render`, `render_driver`,
                `render_rbac`), the names and labels that tie a sweep's objects together
    plan        what would go wrong, found offline (`plan_problems`): store, source, image, resources, polling and
                the official schemas of the oldest supported and the current Kubernetes
    api         the connection (`connect`, `Apis`), one call with a timeout, API errors as one actionable line,
                the shared reads (Jobs, pods, a Job's state, the recorded memory)
    diagnose    why a pod does not run: waiting containers, unschedulable pods, FailedCreate/FailedMount events,
                Kueue -- each a `Problem` that ends submit or is repeated
    submitter   the reconcile loop (`Submitter`: observe Jobs, memory and store, ask common/schedule.py, create
                Jobs) and `--detach` (`detach`: the same loop as the driver Job)
    commands    `sweep stop`, `sweep logs`, `sweep status --kubernetes`

Every function takes a *resolved* sweep: the command line's overrides (store, source, endpoint, image, namespace,
polling) are applied once, in jobs/, and nothing here falls back to the spec by itself.
"""

from common.k8s.api import ACTIVE, REQUEST_TIMEOUT, TERMINAL, Apis, connect, job_state, list_jobs, list_pods
from common.k8s.commands import detached_summary, job_states, logs, stop
from common.k8s.diagnose import Problem, unschedulable
from common.k8s.manifests import (CONFIG_PATH, FILLED, HASH_LABEL, QUEUE_LABEL, SPEC_LABEL, SWEEP_LABEL,
                                  VARIANT_LABEL, job_name, render, render_driver, render_rbac, spec_name, summary,
                                  write_manifests)
from common.k8s.plan import MIN_VERSION, SCHEMA_VERSION, plan_problems, validate_schema
from common.k8s.submitter import SubmitResult, Submitter, detach, submit

__all__ = ["ACTIVE", "CONFIG_PATH", "FILLED", "HASH_LABEL", "MIN_VERSION", "QUEUE_LABEL", "REQUEST_TIMEOUT",
           "SCHEMA_VERSION", "SPEC_LABEL", "SWEEP_LABEL", "TERMINAL", "VARIANT_LABEL", "Apis", "Problem",
           "SubmitResult", "Submitter", "connect", "detach", "detached_summary", "job_name", "job_state", "job_states",
           "list_jobs", "list_pods", "logs", "plan_problems", "render", "render_driver", "render_rbac", "spec_name",
           "stop", "submit", "summary", "unschedulable", "validate_schema", "write_manifests"]
