"""The sweep on Kubernetes: render k8s/job.yaml, check it, submit, watch, explain, stop.

    render(sweep, config_text)   the spec ConfigMap (content-named, immutable) + prepare Job + one Job per variant +
                                 aggregate Job, as dicts: k8s/job.yaml loaded with pyyaml, only the FILLED values
                                 set from the (resolved) spec; every container's args are `job_argv(...)`
    render_driver(...)           the Job that runs the submitter itself in the cluster (`sweep submit --detach`)
    plan_problems(...)           offline checks, one small function per topic: schema (minimum and current
                                 Kubernetes), store, source, endpoint, image, variants, resources, polling
    Submitter                    one reconcile pass (`reconcile`) or passes until the sweep ends (`run`); what it
                                 learns is kept in the cluster (the `<sweep>-state` ConfigMap) and the store, so a
                                 restarted submitter -- or the driver pod -- carries on; `diagnose` says why a pod
                                 does not run, with the kubelet's, scheduler's or admission's own message
    job_states, stop, logs       read, delete (foreground, waiting for the pods) and follow the sweep's Jobs

Every function takes a *resolved* sweep: the command line's overrides (store, source, endpoint, image, namespace,
polling) are applied once, in jobs/, and nothing here falls back to the spec by itself. The cluster is reached
through `Apis(batch, core, custom)` with the methods of the `kubernetes` client's BatchV1Api, CoreV1Api and
CustomObjectsApi used here; tests pass an in-memory fake with the same methods.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from common import status, table
from common.status import parse_time
from common.config import Resources, Sweep, Variant, parse_sweep
from common.errors import AquariumError, BadInput, TransientError
from common.executor import job_argv

SCHEMA_VERSION = "1.33.0"  # the current Kubernetes version whose OpenAPI schema `plan` validates against
MIN_VERSION = "1.29.0"  # the oldest supported: podFailurePolicy's FailJob rule and podReplacementPolicy by default
CONFIG_DIR = "/etc/aquarium"
CONFIG_KEY = "sweep.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
STATE_KEY = "state.json"
CONTAINER = "aquarium"
APP = "aquarium-sweep"
SUBMITTER_SA = "aquarium-sweep-submitter"  # k8s/rbac.yaml: the ServiceAccount bound to the submitter Role
SWEEP_LABEL = "aquarium-sweep/sweep"
VARIANT_LABEL = "aquarium-sweep/variant"
HASH_LABEL = "aquarium-sweep/config-hash"
SPEC_LABEL = "aquarium-sweep/spec"  # the spec ConfigMap a Job was rendered with
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"
RESERVED = ("prepare", "aggregate", "spec", "state", "driver")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[mkMGTPE]|[eE][+-]?\d+)?$")
TERMINAL = ("Succeeded", "Failed", "Skipped")
ACTIVE = ("Queued", "Pending", "Starting", "Running")
REQUEST_TIMEOUT = (5, 30)  # seconds to connect and to read: a half-open connection cannot block a poll forever
DRIVER_RESOURCES = Resources(gpu=0, cpu="250m", memory="512Mi")
# What render() sets in k8s/job.yaml; every other value of the template is what the cluster gets.
FILLED = ("metadata.name", "metadata.namespace", "metadata.labels", "spec.backoffLimit",
          "spec.ttlSecondsAfterFinished", "spec.template.metadata.labels", "spec.template.spec.serviceAccountName",
          "container.image", "container.imagePullPolicy", "container.args", "container.env", "container.resources",
          "volume.spec", "volume.tmp")


def templates_dir() -> Path:
    """k8s/ beside the code (a checkout or the image's /app), or AQUARIUM_K8S_DIR."""
    env = os.environ.get("AQUARIUM_K8S_DIR")
    for d in [Path(env)] if env else [Path(__file__).resolve().parent.parent / "k8s", Path.cwd() / "k8s"]:
        if (d / "job.yaml").is_file():
            return d
    raise BadInput(f"Job template not found (looked for k8s/job.yaml beside {Path(__file__).parent.parent} "
                   "and in the current directory): run from a checkout or set AQUARIUM_K8S_DIR")


def _template(name: str) -> dict:
    return yaml.safe_load((templates_dir() / name).read_text())


def is_s3(uri: str) -> bool:
    """The one test for an S3 URI here (parsing it is common/store.py's job)."""
    return uri.startswith("s3://")


# ---------------------------------------------------------------------------------------------- render

def job_name(sweep: Sweep, step: str) -> str:
    """`<sweep>-prepare`, `<sweep>-<variant>`, `<sweep>-aggregate`, `<sweep>-driver`."""
    return f"{sweep.name}-{step}"


def spec_name(sweep: Sweep, config_text: str) -> str:
    """`<sweep>-spec-<sha256 of the text>`: a changed spec is a new ConfigMap, never an edit of a mounted one."""
    return f"{sweep.name}-spec-{hashlib.sha256(config_text.encode()).hexdigest()[:10]}"


def state_name(sweep: Sweep) -> str:
    return f"{sweep.name}-state"


def selector(sweep: Sweep) -> str:
    return f"app.kubernetes.io/name={APP},{SWEEP_LABEL}={sweep.name}"


def _labels(sweep: Sweep, component: str, variant: Variant | None = None, spec: str | None = None) -> dict:
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": sweep.name,
              "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": APP,
              SWEEP_LABEL: sweep.name}
    if spec:
        labels[SPEC_LABEL] = spec
    if variant is not None:
        labels[VARIANT_LABEL] = variant.name
        labels[HASH_LABEL] = variant.config_hash
    return labels


def container_of(job: dict) -> dict:
    (c,) = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER]
    return c


def _env(sweep: Sweep, template_env: list[dict], gpu: int) -> list[dict]:
    """The template's env plus the S3 endpoint, the S3 Secret's keys (never literal values) and, on GPU pods,
    TF_FORCE_GPU_ALLOW_GROWTH."""
    env = list(template_env)
    if gpu:
        env.append({"name": "TF_FORCE_GPU_ALLOW_GROWTH", "value": "true"})
    if sweep.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": sweep.endpoint})
    if sweep.kubernetes.s3_secret:
        for key, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
                              ("AWS_DEFAULT_REGION", True)):
            ref = {"name": sweep.kubernetes.s3_secret, "key": key, **({"optional": True} if optional else {})}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _resources(resources: Resources, gpu: int) -> dict:
    """Requests = limits (Guaranteed QoS); the GPU in limits only (requests default to it)."""
    requests = {"cpu": resources.cpu, "memory": resources.memory}
    if resources.ephemeral_storage:
        requests["ephemeral-storage"] = resources.ephemeral_storage
    limits = dict(requests, **({"nvidia.com/gpu": gpu} if gpu else {}))
    return {"requests": requests, "limits": limits}


def _fill_pod(pod: dict, sweep: Sweep, spec: str, gpu: int) -> None:
    """The pod-level values the spec decides: identity, GPU placement, the spec ConfigMap, /tmp's size, UIDs."""
    k = sweep.kubernetes
    pod["serviceAccountName"] = k.service_account
    if gpu and k.node_selector:
        pod["nodeSelector"] = dict(k.node_selector)
    if gpu and k.tolerations:
        pod["tolerations"] = copy.deepcopy(k.tolerations)
    if k.mount_service_account_token:
        pod["automountServiceAccountToken"] = True
    if k.cluster_assigns_uid:
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            pod["securityContext"].pop(key, None)
    for vol in pod["volumes"]:
        if "configMap" in vol:
            vol["configMap"]["name"] = spec
        if vol["name"] == "tmp" and k.tmp_size_limit:
            vol["emptyDir"] = {"sizeLimit": k.tmp_size_limit}


def _job(sweep: Sweep, step: str, component: str, argv: list[str], resources: Resources, spec: str,
         variant: Variant | None = None) -> dict:
    """One Job from k8s/job.yaml; only the FILLED values (and a variant's deadline and grace period) change."""
    k = sweep.kubernetes
    job = _template("job.yaml")
    labels = _labels(sweep, component, variant, spec)
    queue = {QUEUE_LABEL: k.queue} if k.queue and component != "driver" else {}
    job["metadata"].update(name=job_name(sweep, step), namespace=k.namespace, labels={**labels, **queue})
    job["spec"].update(backoffLimit=k.backoff_limit, ttlSecondsAfterFinished=k.ttl_seconds_after_finished)
    job["spec"]["template"]["metadata"]["labels"] = dict(labels)
    pod = job["spec"]["template"]["spec"]
    gpu = resources.gpu if component == "variant" else 0
    _fill_pod(pod, sweep, spec, gpu)
    c = container_of(job)
    c.update(image=k.image, imagePullPolicy=k.image_pull_policy, args=list(argv),
             env=_env(sweep, c.get("env", []), gpu), resources=_resources(resources, gpu))
    if component == "variant":
        job["spec"]["activeDeadlineSeconds"] = k.active_deadline_seconds
        pod["terminationGracePeriodSeconds"] = k.termination_grace_seconds
    return job


def _spec_in(config_text: str) -> Sweep | None:
    """The spec as the pods will read it from the ConfigMap (None if the text is not a valid spec)."""
    try:
        return parse_sweep(yaml.safe_load(config_text))
    except (AquariumError, yaml.YAMLError):
        return None


def _forwarded(sweep: Sweep, config_text: str) -> dict:
    """`store`/`source` the pods must get as arguments: where the resolved sweep differs from the ConfigMap's text."""
    text = _spec_in(config_text)
    store = None if text and text.store == sweep.store else sweep.store
    source = None if text and text.dataset.source == sweep.dataset.source else sweep.dataset.source
    return {"store": store, "source": source}


def render(sweep: Sweep, config_text: str) -> list[dict]:
    """Every manifest of the (resolved) sweep, in submission order: ConfigMap, prepare, variants..., aggregate."""
    k = sweep.kubernetes
    spec = spec_name(sweep, config_text)
    cm = _template("configmap.yaml")
    cm["metadata"].update(name=spec, namespace=k.namespace, labels=_labels(sweep, "spec"))
    cm["data"] = {CONFIG_KEY: config_text}
    fw = _forwarded(sweep, config_text)
    out = [cm, _job(sweep, "prepare", "prepare", job_argv(sweep, "prepare", CONFIG_PATH, **fw), k.job_resources,
                    spec)]
    for v in sweep.variants:
        argv = job_argv(sweep, v.job, CONFIG_PATH, variant=v.name, store=fw["store"])
        out.append(_job(sweep, v.name, "variant", argv, v.resources, spec, v))
    out.append(_job(sweep, "aggregate", "aggregate", job_argv(sweep, "aggregate", CONFIG_PATH, store=fw["store"]),
                    k.job_resources, spec))
    return out


def driver_argv(sweep: Sweep) -> list[str]:
    """`aquarium sweep submit` as the driver pod runs it: every resolved override spelled out."""
    k = sweep.kubernetes
    argv = ["sweep", "submit", "--driver", "--config", CONFIG_PATH, "--namespace", k.namespace,
            "--store", sweep.store, "--source", sweep.dataset.source, "--image", k.image,
            "--poll-seconds", str(k.poll_seconds), "--pull-timeout", str(k.pull_timeout_seconds)]
    return argv + (["--endpoint", sweep.endpoint] if sweep.endpoint else [])


def render_driver(sweep: Sweep, manifests: list[dict]) -> dict:
    """The driver Job: the submitter's reconcile loop in the cluster, as the submitter ServiceAccount. Its
    deadline covers every variant run one after another plus prepare and aggregate."""
    job = _job(sweep, "driver", "driver", driver_argv(sweep), DRIVER_RESOURCES, manifests[0]["metadata"]["name"])
    pod = job["spec"]["template"]["spec"]
    pod.update(serviceAccountName=SUBMITTER_SA, automountServiceAccountToken=True)
    template_deadline = job["spec"]["activeDeadlineSeconds"]
    job["spec"]["activeDeadlineSeconds"] = (sweep.kubernetes.active_deadline_seconds * len(sweep.variants)
                                            + 2 * template_deadline)
    return job


def render_rbac(namespace: str) -> list[dict]:
    """k8s/rbac.yaml with its namespace filled in (applied once per namespace by an admin)."""
    docs = [d for d in yaml.safe_load_all((templates_dir() / "rbac.yaml").read_text()) if d]
    for d in docs:
        d["metadata"]["namespace"] = namespace
        for s in d.get("subjects", []):
            s["namespace"] = namespace
    return docs


# ---------------------------------------------------------------------------------------------- plan

def validate_schema(manifest: dict, version: str = SCHEMA_VERSION) -> str | None:
    """None when the manifest is valid against the official OpenAPI schema of `version` (offline), else why."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        err = getattr(e, "caught", e)
        where = ".".join(str(p) for p in getattr(err, "absolute_path", [])) or "(top level)"
        return f"{where}: {getattr(err, 'message', str(err))}"
    except Exception as e:  # SchemaNotFoundError, InvalidSchemaError
        return f"cannot validate against Kubernetes {version}: {e}"
    return None


def is_local_source(source: str) -> bool:
    from common.data.source import is_gdrive

    return not (source.startswith(("http://", "https://")) or is_s3(source) or is_gdrive(source))


@dataclass
class Problems:
    """What `plan` found: errors stop a submit, warnings are printed. `where` names the spec file."""

    where: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors.append(f"{self.where}: {text}")

    def warn(self, text: str) -> None:
        self.warnings.append(f"{self.where}: {text}")


def _check_store(sweep: Sweep, p: Problems) -> None:
    if not is_s3(sweep.store):
        p.error(f"store is {sweep.store!r} (spec or --store): pods on different nodes cannot share a local folder; use an "
                "S3 store: store: s3://BUCKET/PREFIX in the spec or --store s3://BUCKET/PREFIX")


def _check_source(sweep: Sweep, p: Problems) -> None:
    src = sweep.dataset.source
    if is_local_source(src):
        p.error(f"dataset.source is the local file {src!r} (spec or --source): the prepare pod cannot read it; "
                "upload it and pass --source s3://BUCKET/KEY or an https:// URL (or a Google Drive link)")


def _check_endpoint(sweep: Sweep, p: Problems) -> None:
    endpoint = sweep.endpoint or ""
    if re.match(r"^https?://(localhost|127\.|\[::1\])", endpoint):
        p.warn(f"endpoint {endpoint} (--endpoint, AWS_ENDPOINT_URL or the spec) is this machine's loopback; pods "
               "cannot reach it: use the in-cluster service address, e.g. http://minio.NAMESPACE.svc:9000")


def _check_image(sweep: Sweep, p: Problems) -> None:
    k = sweep.kubernetes
    image = k.image
    if not re.match(r"^[a-z0-9]+([._/:@-][a-zA-Z0-9_.-]+)*$", image) or " " in image:
        p.error(f"kubernetes.image {image!r} is not a valid image reference: use REGISTRY/NAME:TAG, "
                "e.g. ghcr.io/you/aquarium-sweep:0.1.0")
    elif (image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]) and k.image_pull_policy != "Always":
        p.warn(f"kubernetes.image {image!r} has no version tag: nodes may run a stale cached image; push a "
               "versioned tag (make push IMAGE=...:VERSION)")
    gpu_variants = [v.name for v in sweep.variants if v.resources.gpu > 0]
    if gpu_variants and re.search(r"[:-]cpu\b", image):
        p.warn(f"variants {', '.join(gpu_variants)} ask for GPUs but kubernetes.image {image!r} looks like the "
               "CPU build: build with make image TF_EXTRA=gpu")


def _check_variants(sweep: Sweep, p: Problems) -> None:
    for v in sweep.variants:
        if v.kind == "finetune" and v.resources.gpu == 0:
            p.warn(f"variant {v.name!r} fine-tunes MobileNetV3 without a GPU (resources.gpu: 0): expect it to be "
                   "very slow")
        if v.name in RESERVED:
            p.error(f"variant name {v.name!r} clashes with the sweep's own {job_name(sweep, v.name)} object: "
                    "rename the variant")
        if v.resources.gpu > 8:
            p.error(f"variant {v.name!r} asks for {v.resources.gpu} GPUs; one variant trains on one GPU: set "
                    "resources.gpu to 1")


def _check_resources(sweep: Sweep, p: Problems) -> None:
    k = sweep.kubernetes
    if k.job_resources.gpu:
        p.warn("kubernetes.job_resources.gpu is ignored: prepare and aggregate need no GPU")
    examples = {"cpu": "4 or 500m", "memory": "16Gi", "ephemeral_storage": "60Gi"}
    for what, res in [("kubernetes.job_resources", k.job_resources)] + [
            (f"variants[{v.name}].resources", v.resources) for v in sweep.variants]:
        for key, example in examples.items():
            value = getattr(res, key)
            if value is not None and not QUANTITY.match(str(value)):
                p.error(f"{what}.{key} {str(value)!r} is not a Kubernetes quantity: write e.g. {example}")
    if k.tmp_size_limit and not QUANTITY.match(k.tmp_size_limit):
        p.error(f"kubernetes.tmp_size_limit {k.tmp_size_limit!r} is not a Kubernetes quantity: write e.g. 50Gi")


def _check_polling(sweep: Sweep, p: Problems) -> None:
    """A finished Job must outlive three polls, or the submitter may never see how it ended."""
    k = sweep.kubernetes
    if k.ttl_seconds_after_finished < 3 * k.poll_seconds:
        p.error(f"kubernetes.ttl_seconds_after_finished {k.ttl_seconds_after_finished} is shorter than three polls "
                f"({k.poll_seconds:g} s each): set it to at least {3 * k.poll_seconds:g} (default 604800)")


def _check_schema(manifests: list[dict], p: Problems) -> None:
    """Valid against the current schema and the oldest supported Kubernetes."""
    for m in manifests:
        for version in (MIN_VERSION, SCHEMA_VERSION):
            why = validate_schema(m, version)
            if why:
                p.errors.append(f"{m['kind']} {m['metadata']['name']} is not valid Kubernetes {version}: {why}")
                break


def plan_problems(sweep: Sweep, manifests: list[dict], where: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) of running this resolved sweep on a cluster; each a one-line what, where, how to fix.
    `manifests` are render()'s; the driver Job is checked with them."""
    p = Problems(where)
    for check in (_check_store, _check_source, _check_endpoint, _check_image, _check_variants, _check_resources,
                  _check_polling):
        check(sweep, p)
    _check_schema(manifests + [render_driver(sweep, manifests)], p)
    return p.errors, p.warnings


def summary(manifests: list[dict]) -> str:
    """One line per manifest: kind, name, image, resources, args."""
    lines = []
    for m in manifests:
        if m["kind"] != "Job":
            lines.append(f"{m['kind']:<10} {m['metadata']['name']:<32} namespace {m['metadata']['namespace']}")
            continue
        c = container_of(m)
        lim = c["resources"]["limits"]
        gpu = lim.get("nvidia.com/gpu", 0)
        lines.append(f"{'Job':<10} {m['metadata']['name']:<32} cpu {lim['cpu']:<4} mem {lim['memory']:<6} "
                     f"gpu {gpu}  aquarium {' '.join(c['args'])}")
    return "\n".join(lines)


def write_manifests(manifests: list[dict], out: str | Path) -> list[Path]:
    """One YAML file per manifest (00-spec.yaml, 01-prepare.yaml, ...) plus rbac.yaml."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, m in enumerate(manifests):
        short = m["metadata"]["labels"].get(VARIANT_LABEL) or m["metadata"]["labels"]["app.kubernetes.io/component"]
        path = out / f"{i:02d}-{short}.yaml"
        path.write_text(yaml.safe_dump(m, sort_keys=False, width=120))
        paths.append(path)
    rbac = out / "rbac.yaml"
    rbac.write_text(yaml.safe_dump_all(render_rbac(manifests[0]["metadata"]["namespace"]), sort_keys=False))
    return paths + [rbac]


# ---------------------------------------------------------------------------------------------- cluster access

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


# ---------------------------------------------------------------------------------------------- states

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


def _step_of(obj: dict) -> str | None:
    """'prepare', a variant's name, 'aggregate' or 'driver', from a Job's or pod's labels."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    comp = labels.get("app.kubernetes.io/component")
    return labels.get(VARIANT_LABEL) if comp == "variant" else comp


def _identity(obj: dict) -> str | None:
    """What makes a step's result current: a variant's config hash, else the spec ConfigMap it was rendered with."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(HASH_LABEL) or labels.get(SPEC_LABEL)


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


def job_states(sweep: Sweep, apis: Apis) -> dict[str, str]:
    """State of every step ('prepare', variant names, 'aggregate') for `aquarium sweep status --kubernetes`: the
    Job's, else the one recorded before the TTL controller deleted it, else 'NotSubmitted'."""
    jobs, steps = list_jobs(sweep, apis), read_memory(sweep, apis).get("steps") or {}
    return {s: job_state(jobs[s]) if s in jobs else (steps.get(s) or {}).get("state", "NotSubmitted")
            for s in ["prepare", *sweep.names, "aggregate"]}


# ---------------------------------------------------------------------------------------------- why a pod does not run

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


# ---------------------------------------------------------------------------------------------- submit

@dataclass
class SubmitResult:
    states: dict[str, str]  # step -> NotSubmitted|Queued|Pending|Starting|Running|Succeeded|Failed|Skipped
    created: list[str] = field(default_factory=list)  # Job names created by this submitter
    warnings: list[str] = field(default_factory=list)  # pending-watchdog reports
    done: bool = False
    problems: list[Problem] = field(default_factory=list)  # why steps do not run, at the last pass

    @property
    def exit_code(self) -> int:
        """0: every step succeeded (or was already done); 1: a step failed; 3: still running (--no-watch)."""
        if any(s == "Failed" for s in self.states.values()):
            return 1
        return 0 if self.done else 3


class Submitter:
    """One resolved sweep on its namespace. `reconcile()` does one pass; `run()` passes until the sweep ends.
    Restart-safe: the cluster (Jobs, the `<sweep>-state` ConfigMap) and the store's `_SUCCESS` markers, re-read at
    every pass, say what is done; nothing is kept only in memory."""

    def __init__(self, sweep: Sweep, manifests: list[dict], apis: Apis, store=None,
                 echo: Callable[[str], None] = print, now: Callable[[], datetime] | None = None,
                 sleep: Callable[[float], None] | None = None, driver: bool = False):
        self.sweep, self.manifests, self.apis, self.echo, self.driver = sweep, manifests, apis, echo, driver
        self.ns = sweep.kubernetes.namespace
        self.by_step = {_step_of(m): m for m in manifests[1:]}
        self.steps = ["prepare", *sweep.names, "aggregate"]
        self._store, self._store_failed = store, False
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.sleep = sleep or time.sleep
        self.limit = sweep.max_parallel or len(sweep.variants)
        self.created: list[str] = []
        self.reported: set[str] = set()
        self.warnings: list[str] = []
        self._saved: dict | None = None
        self._last_table = ""

    # -- store ---------------------------------------------------------------------------------------------
    def store(self):
        """The sweep's store, opened once; None (noted once) when it cannot be reached from here."""
        if self._store is None and not self._store_failed:
            from common.store import open_store

            try:
                self._store = open_store(self.sweep.store, self.sweep.endpoint)
            except (AquariumError, OSError) as e:
                self._store_unreachable(e)
        return self._store

    def _store_unreachable(self, e: Exception) -> None:
        if not self._store_failed:
            self.echo(f"note: cannot read the store {self.sweep.store} from here ({e}); finished variants will "
                      "skip themselves in their pods")
        self._store_failed = True

    def finished_in_store(self) -> set[str]:
        """Variants whose `_SUCCESS` carries their config hash, re-read at every pass."""
        store = self.store()
        if store is None:
            return set()
        try:
            return {v.name for v in self.sweep.variants if status.is_finished(store, self.sweep, v)}
        except (AquariumError, OSError) as e:
            self._store_unreachable(e)
            return set()

    # -- cluster writes ------------------------------------------------------------------------------------
    def apply_configmap(self) -> None:
        """Create the content-named, immutable spec ConfigMap unless it exists (then its data must match)."""
        cm = self.manifests[0]
        name = cm["metadata"]["name"]
        existing = _call(f"read ConfigMap {name}", self.apis.core.read_namespaced_config_map, name, self.ns,
                         missing_ok=True)
        if existing is None:
            try:
                _call(f"create ConfigMap {name}", self.apis.core.create_namespaced_config_map, self.ns, cm)
            except Conflict:
                pass  # created meanwhile by another submitter: the same content, by its name
        elif (existing.get("data") or {}) != cm["data"]:
            raise BadInput(f"ConfigMap {name} in namespace {self.ns} holds another spec than its name says: delete "
                           "it (kubectl delete configmap ...) and submit again")

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

    def check_conflicts(self, jobs: dict[str, dict]) -> None:
        """A variant Job left from a different config would be mistaken for this one: refuse before any write."""
        for v in self.sweep.variants:
            job = jobs.get(v.name)
            old = ((job or {}).get("metadata") or {}).get("labels", {}).get(HASH_LABEL)
            if old and old != v.config_hash:
                raise BadInput(f"Job {job_name(self.sweep, v.name)} in namespace {self.ns} ran config {old} but the "
                               f"spec now says {v.config_hash}: run `aquarium sweep stop --config ...` first "
                               "(results stay in the store), then submit again")

    # -- state -----------------------------------------------------------------------------------------------
    def _recalled(self, step: str, memory: dict) -> str | None:
        """A terminal state recorded for this step's current identity (its Job may have been TTL-deleted)."""
        rec = (memory.get("steps") or {}).get(step) or {}
        current = _identity(self.by_step[step])
        return rec.get("state") if rec.get("state") in ("Succeeded", "Failed") and rec.get("key") == current else None

    def states(self, jobs: dict[str, dict], memory: dict) -> dict[str, str]:
        """Each step's state: its Job, else what was recorded, else finished in the store (Skipped)."""
        done = self.finished_in_store()
        states = {}
        for step in self.steps:
            state = job_state(jobs.get(step))
            if state == "NotSubmitted":
                state = self._recalled(step, memory) or ("Skipped" if step in done else state)
            states[step] = state
        names = self.sweep.names
        if states["prepare"] == "Failed":
            states.update({s: "Skipped" for s in names + ["aggregate"] if states[s] == "NotSubmitted"})
        over = all(states[n] in TERMINAL for n in names)
        if over and not any(states[n] in ("Succeeded", "Skipped") for n in names) \
                and states["aggregate"] == "NotSubmitted":
            states["aggregate"] = "Skipped"  # nothing to aggregate: every variant failed
        return states

    def advance(self, states: dict[str, str]) -> None:
        """Create what may start now: prepare; then variants, at most max_parallel active; then aggregate."""
        if states["prepare"] == "NotSubmitted":
            self.create("prepare")
            states["prepare"] = "Pending"
        if states["prepare"] != "Succeeded":
            return
        names = self.sweep.names
        active = sum(states[n] in ACTIVE for n in names)
        for name in names:
            if active >= self.limit:
                break
            if states[name] == "NotSubmitted":
                self.create(name)
                states[name], active = "Pending", active + 1
        over = all(states[n] in TERMINAL for n in names)
        if over and any(states[n] in ("Succeeded", "Skipped") for n in names) and states["aggregate"] == "NotSubmitted":
            self.create("aggregate")
            states["aggregate"] = "Pending"

    def remember(self, jobs: dict[str, dict], states: dict[str, str], problems: list[Problem]) -> None:
        """Record terminal states (with the identity they hold for) and the latest problems and table in the
        `<sweep>-state` ConfigMap, when they changed."""
        memory = {"steps": {s: {"state": states[s], "key": _identity(jobs[s])} for s in self.steps
                            if s in jobs and states[s] in ("Succeeded", "Failed")},
                  "problems": [p.text for p in problems], "driver": self.driver,
                  "table": self.table(states, jobs, problems)}
        if memory == self._saved:
            return
        previous = (read_memory(self.sweep, self.apis).get("steps") or {}) if self._saved is None else \
            self._saved["steps"]
        memory["steps"] = {**previous, **memory["steps"]}
        self._write_memory(dict(memory, updated=self.now().isoformat()))
        self._saved = memory

    def _write_memory(self, memory: dict) -> None:
        name = state_name(self.sweep)
        body = {"apiVersion": "v1", "kind": "ConfigMap", "data": {STATE_KEY: json.dumps(memory, sort_keys=True)},
                "metadata": {"name": name, "namespace": self.ns, "labels": _labels(self.sweep, "state")}}
        core = self.apis.core
        if _call(f"read ConfigMap {name}", core.read_namespaced_config_map, name, self.ns, missing_ok=True) is None:
            try:
                _call(f"create ConfigMap {name}", core.create_namespaced_config_map, self.ns, body)
                return
            except Conflict:
                pass
        _call(f"update ConfigMap {name}", core.replace_namespaced_config_map, name, self.ns, body)

    # -- diagnosis -------------------------------------------------------------------------------------------
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

    # -- one pass ----------------------------------------------------------------------------------------------
    def reconcile(self) -> SubmitResult:
        """Conflicts first (before any write), then the spec ConfigMap, the states, new Jobs, the reasons."""
        jobs = list_jobs(self.sweep, self.apis)
        self.check_conflicts(jobs)
        self.apply_configmap()
        states = self.states(jobs, read_memory(self.sweep, self.apis) if self._saved is None else self._saved)
        self.advance(states)
        problems = self.diagnose({s: jobs[s] for s in self.steps if s in jobs and states[s] in ACTIVE})
        self.remember(jobs, states, problems)
        self.report(problems)
        done = states["prepare"] == "Failed" or states["aggregate"] in TERMINAL
        return SubmitResult(states, list(self.created), list(self.warnings), done, problems)

    def report(self, problems: list[Problem]) -> None:
        """Retried pulls at every poll; the first problem that cannot resolve by itself ends submit (exit 2). The
        Jobs stay for inspection; `aquarium sweep stop` removes them."""
        for p in problems:
            if p.repeat:
                self.echo(f"warning: {p.text}")
        fatal = [p for p in problems if p.fatal]
        if fatal:
            raise BadInput(fatal[0].text)

    def table(self, states: dict[str, str], jobs: dict[str, dict], problems: list[Problem] = ()) -> str:
        why = {}
        for p in problems:
            why.setdefault(p.step, p.text)
        rows = []
        for step in self.steps:
            state = states.get(step, "NotSubmitted")
            detail = failure_reason(jobs.get(step)) if state == "Failed" else why.get(step, "")
            if state == "Skipped" and not detail:
                detail = "finished in the store (same config hash)" if step in self.sweep.names else "nothing to do"
            rows.append({"step": step, "job": job_name(self.sweep, step), "state": state, "detail": detail})
        return table.render(rows)

    def run(self, watch: bool = True, max_passes: int | None = None) -> SubmitResult:
        passes = 0
        while True:
            result = self.reconcile()
            passes += 1
            table = self._saved["table"] if self._saved else ""
            if table != self._last_table:
                self.echo(table)
                self._last_table = table
            if result.done or not watch or (max_passes and passes >= max_passes):
                return result
            self.sleep(self.sweep.kubernetes.poll_seconds)


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


def submit(sweep: Sweep, config_text: str, apis: Apis, watch: bool = True, **kwargs) -> SubmitResult:
    """Render and run: the library entry for tests and scripts (the CLI renders once and checks first)."""
    return Submitter(sweep, render(sweep, config_text), apis, **kwargs).run(watch=watch)


def detach(sub: Submitter) -> str:
    """Start the driver Job (the same reconcile loop, in the cluster) and wait until its pod runs; returns its
    state. Problems of the driver pod are reported (and end it) like any step's."""
    jobs = list_jobs(sub.sweep, sub.apis)
    sub.check_conflicts(jobs)
    sub.apply_configmap()
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
        sub.report(sub.diagnose({"driver": job} if job else {}))
        if (sub.now() - start).total_seconds() > k.pending_timeout_seconds + k.pull_timeout_seconds:
            raise TransientError(f"the driver Job {body['metadata']['name']} is still {state}: see "
                                 "`aquarium sweep status --kubernetes`; it keeps trying in the cluster")
        sub.sleep(k.poll_seconds)


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
