"""The sweep on Kubernetes: render the Job templates in k8s/, check them, submit, watch, stop.

    render(sweep, config_text)   ConfigMap (the spec) + prepare Job + one Job per variant + aggregate Job, as dicts:
                                 the YAML templates in k8s/ are loaded with pyyaml and filled in as data; every
                                 container's args are `job_argv(...)`, the same command a local process runs
    plan_problems(...)           offline checks: the official OpenAPI schema (kubernetes-validate), store, source,
                                 image, GPU and resource settings
    submit(...)                  one reconcile pass (or, with watch, passes until the sweep ends): ConfigMap ->
                                 prepare -> variants (at most max_parallel active, finished ones skipped) ->
                                 aggregate; idempotent; a pending watchdog names pods the scheduler cannot place
    job_states(...), stop(...)   the sweep's Jobs, read or deleted (results stay in the store)

The cluster is reached through an `Apis(batch, core)` pair with the methods of the `kubernetes` client's
BatchV1Api and CoreV1Api that are used here; tests pass an in-memory fake with the same methods.
"""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from common.config import Sweep, Variant
from common.errors import AquariumError, BadInput, TransientError
from common.executor import job_argv

SCHEMA_VERSION = "1.33.0"  # the Kubernetes version whose OpenAPI schema `plan` validates against
CONFIG_DIR = "/etc/aquarium"
CONFIG_KEY = "sweep.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CONTAINER = "aquarium"
APP = "aquarium-sweep"
SWEEP_LABEL = "aquarium-sweep/sweep"
VARIANT_LABEL = "aquarium-sweep/variant"
HASH_LABEL = "aquarium-sweep/config-hash"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RESERVED = ("prepare", "aggregate", "spec")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[mkMGTPE]|[eE][+-]?\d+)?$")
TERMINAL = ("Succeeded", "Failed", "Skipped")


def templates_dir() -> Path:
    """k8s/ beside the code (a checkout or the image's /app), or AQUARIUM_K8S_DIR."""
    env = os.environ.get("AQUARIUM_K8S_DIR")
    for d in [Path(env)] if env else [Path(__file__).resolve().parent.parent / "k8s", Path.cwd() / "k8s"]:
        if (d / "variant-job.yaml").is_file():
            return d
    raise BadInput(f"Job templates not found (looked for k8s/variant-job.yaml beside {Path(__file__).parent.parent} "
                   "and in the current directory): run from a checkout or set AQUARIUM_K8S_DIR")


def _template(name: str) -> dict:
    return yaml.safe_load((templates_dir() / name).read_text())


# ---------------------------------------------------------------------------------------------- render

def job_name(sweep: Sweep, step: str) -> str:
    """`<sweep>-prepare`, `<sweep>-<variant>`, `<sweep>-aggregate`."""
    return f"{sweep.name}-{step}"


def selector(sweep: Sweep) -> str:
    return f"app.kubernetes.io/name={APP},{SWEEP_LABEL}={sweep.name}"


def _labels(sweep: Sweep, component: str, variant: Variant | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": sweep.name,
              "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": APP,
              SWEEP_LABEL: sweep.name}
    if variant is not None:
        labels[VARIANT_LABEL] = variant.name
        labels[HASH_LABEL] = variant.config_hash
    return labels


def _job(sweep: Sweep, template: str, step: str, component: str, argv: list[str], resources, namespace: str,
         endpoint: str | None, variant: Variant | None = None) -> dict:
    k = sweep.kubernetes
    job = _template(template)
    labels = _labels(sweep, component, variant)
    job["metadata"].update(name=job_name(sweep, step), namespace=namespace)
    job["metadata"]["labels"] = dict(labels)
    if k.queue:
        job["metadata"]["labels"][QUEUE_LABEL] = k.queue
    spec = job["spec"]
    spec.update(backoffLimit=k.backoff_limit, activeDeadlineSeconds=k.active_deadline_seconds,
                ttlSecondsAfterFinished=k.ttl_seconds_after_finished)
    pod_meta = spec["template"]["metadata"]
    pod_meta["labels"] = dict(labels)
    pod = spec["template"]["spec"]
    pod["serviceAccountName"] = k.service_account
    if component == "variant":
        pod["terminationGracePeriodSeconds"] = k.termination_grace_seconds
    gpu = resources.gpu if component == "variant" else 0
    pod.pop("nodeSelector", None)
    pod.pop("tolerations", None)
    if gpu:
        if k.node_selector:
            pod["nodeSelector"] = dict(k.node_selector)
        if k.tolerations:
            pod["tolerations"] = copy.deepcopy(k.tolerations)
    for vol in pod["volumes"]:
        if "configMap" in vol:
            vol["configMap"]["name"] = job_name(sweep, "spec")
        if vol["name"] == "tmp" and k.tmp_size_limit:
            vol["emptyDir"] = {"sizeLimit": k.tmp_size_limit}
    (c,) = [c for c in pod["containers"] if c["name"] == CONTAINER]
    c.update(image=k.image, imagePullPolicy=k.image_pull_policy, args=list(argv))
    env = [e for e in c.get("env", []) if e["name"] != "TF_FORCE_GPU_ALLOW_GROWTH" or gpu]
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    if k.s3_secret:
        for key, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
                              ("AWS_DEFAULT_REGION", True)):
            ref = {"name": k.s3_secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    c["env"] = env
    limits = {"cpu": resources.cpu, "memory": resources.memory}
    if gpu:
        limits["nvidia.com/gpu"] = gpu
    c["resources"] = {"requests": {"cpu": resources.cpu, "memory": resources.memory}, "limits": limits}
    return job


def render(sweep: Sweep, config_text: str, namespace: str | None = None, store: str | None = None,
           source: str | None = None, endpoint: str | None = None) -> list[dict]:
    """Every manifest of the sweep, in submission order: ConfigMap, prepare, variants..., aggregate.

    `store`/`source` override the spec's (they become `--store`/`--source` in the args, as for a local run);
    `endpoint` overrides the spec's S3 endpoint (AWS_ENDPOINT_URL in the pods)."""
    ns = namespace or sweep.kubernetes.namespace
    endpoint = endpoint or sweep.endpoint
    cm = _template("configmap.yaml")
    cm["metadata"].update(name=job_name(sweep, "spec"), namespace=ns, labels=_labels(sweep, "spec"))
    cm["data"] = {CONFIG_KEY: config_text}
    k = sweep.kubernetes
    out = [cm, _job(sweep, "prepare-job.yaml", "prepare", "prepare",
                    job_argv(sweep, "prepare", CONFIG_PATH, store=store, source=source), k.job_resources, ns,
                    endpoint)]
    for v in sweep.variants:
        out.append(_job(sweep, "variant-job.yaml", v.name, "variant",
                        job_argv(sweep, v.job, CONFIG_PATH, variant=v.name, store=store), v.resources, ns,
                        endpoint, v))
    out.append(_job(sweep, "aggregate-job.yaml", "aggregate", "aggregate",
                    job_argv(sweep, "aggregate", CONFIG_PATH, store=store), k.job_resources, ns, endpoint))
    return out


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

    if source.startswith(("http://", "https://", "s3://")) or is_gdrive(source):
        return False
    return True


def plan_problems(sweep: Sweep, manifests: list[dict], config_path: str, store: str | None = None,
                  source: str | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) of running this sweep on a cluster; each a one-line what, where, how to fix."""
    errors, warnings = [], []
    k = sweep.kubernetes
    store_uri = store or sweep.store
    where_store = "--store" if store else f"{config_path}: store"
    if not store_uri.startswith("s3://"):
        errors.append(f"{where_store} is {store_uri!r}: pods on different nodes cannot share a local folder; "
                      "use an S3 store: store: s3://BUCKET/PREFIX in the spec or --store s3://BUCKET/PREFIX")
    src = source or sweep.dataset.source
    if is_local_source(src):
        where_src = "--source" if source else f"{config_path}: dataset.source"
        errors.append(f"{where_src} is the local file {src!r}: the prepare pod cannot read it; upload it and "
                      "pass --source s3://BUCKET/KEY or an https:// URL (or a Google Drive link)")
    endpoint = sweep.endpoint or ""
    if re.match(r"^https?://(localhost|127\.|\[::1\])", endpoint):
        warnings.append(f"{config_path}: endpoint {endpoint} is this machine's loopback; pods cannot reach it: "
                        "use the in-cluster service address, e.g. http://minio.NAMESPACE.svc:9000")
    image = k.image
    if not re.match(r"^[a-z0-9]+([._/:@-][a-zA-Z0-9_.-]+)*$", image) or " " in image:
        errors.append(f"{config_path}: kubernetes.image {image!r} is not a valid image reference: "
                      "use REGISTRY/NAME:TAG, e.g. ghcr.io/you/aquarium-sweep:0.1.0")
    elif (image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]) and k.image_pull_policy != "Always":
        warnings.append(f"{config_path}: kubernetes.image {image!r} has no version tag: nodes may run a stale "
                        "cached image; push a versioned tag (make push IMAGE=...:VERSION)")
    gpu_variants = [v.name for v in sweep.variants if v.resources.gpu > 0]
    if gpu_variants and re.search(r"[:-]cpu\b", image):
        warnings.append(f"{config_path}: variants {', '.join(gpu_variants)} ask for GPUs but kubernetes.image "
                        f"{image!r} looks like the CPU build: build with make image TF_EXTRA=gpu")
    for v in sweep.variants:
        if v.kind == "finetune" and v.resources.gpu == 0:
            warnings.append(f"{config_path}: variant {v.name!r} fine-tunes MobileNetV3 without a GPU "
                            "(resources.gpu: 0): expect it to be very slow")
        if v.name in RESERVED:
            errors.append(f"{config_path}: variant name {v.name!r} clashes with the sweep's own "
                          f"{job_name(sweep, v.name)} object: rename the variant")
        if v.resources.gpu > 8:
            errors.append(f"{config_path}: variant {v.name!r} asks for {v.resources.gpu} GPUs; one variant trains "
                          "on one GPU: set resources.gpu to 1")
    if k.job_resources.gpu:
        warnings.append(f"{config_path}: kubernetes.job_resources.gpu is ignored: prepare and aggregate need no GPU")
    for what, res in [("kubernetes.job_resources", k.job_resources)] + [
            (f"variants[{v.name}].resources", v.resources) for v in sweep.variants]:
        for key in ("cpu", "memory"):
            value = str(getattr(res, key))
            if not QUANTITY.match(value):
                errors.append(f"{config_path}: {what}.{key} {value!r} is not a Kubernetes quantity: "
                              f"write e.g. {'4 or 500m' if key == 'cpu' else '16Gi'}")
    if k.tmp_size_limit and not QUANTITY.match(k.tmp_size_limit):
        errors.append(f"{config_path}: kubernetes.tmp_size_limit {k.tmp_size_limit!r} is not a Kubernetes "
                      "quantity: write e.g. 50Gi")
    for m in manifests:
        why = validate_schema(m)
        if why:
            errors.append(f"{m['kind']} {m['metadata']['name']} is not valid Kubernetes {SCHEMA_VERSION}: {why}")
    return errors, warnings


def summary(manifests: list[dict]) -> str:
    """One line per manifest: kind, name, image, resources, args."""
    lines = []
    for m in manifests:
        if m["kind"] != "Job":
            lines.append(f"{m['kind']:<10} {m['metadata']['name']:<32} namespace {m['metadata']['namespace']}")
            continue
        c = m["spec"]["template"]["spec"]["containers"][0]
        lim = c["resources"]["limits"]
        gpu = lim.get("nvidia.com/gpu", 0)
        lines.append(f"{'Job':<10} {m['metadata']['name']:<32} cpu {lim['cpu']:<4} mem {lim['memory']:<6} "
                     f"gpu {gpu}  aquarium {' '.join(c['args'])}")
    return "\n".join(lines)


def write_manifests(manifests: list[dict], out: str | Path) -> list[Path]:
    """One YAML file per manifest (00-configmap.yaml, 01-prepare.yaml, ...) plus rbac.yaml."""
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
    """The two API groups the submitter uses: BatchV1Api-like `batch`, CoreV1Api-like `core`."""

    batch: Any
    core: Any


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
    return Apis(client.BatchV1Api(), client.CoreV1Api())


def _plain(obj) -> Any:
    """A client model (V1Job, ...) as the camelCase dict the API returns; dicts pass through unchanged."""
    if obj is None or isinstance(obj, (dict, list, str, int, float, bool)):
        return obj
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def _status(e: Exception) -> int | None:
    return getattr(e, "status", None)


def _call(what: str, fn: Callable, *args, **kwargs):
    """Call the API; 404 -> None; other API errors -> one-line AquariumErrors (403 names the RBAC to apply)."""
    try:
        return _plain(fn(*args, **kwargs))
    except Exception as e:
        status = _status(e)
        if status == 404:
            return None
        if status in (401, 403):
            raise BadInput(f"Kubernetes refused to {what} ({status} {getattr(e, 'reason', '')}): apply "
                           "k8s/rbac.yaml in the namespace and bind the aquarium-sweep-submitter Role to you")
        if status == 409:
            raise
        if status is not None or isinstance(e, (ConnectionError, OSError)) or "urllib3" in type(e).__module__:
            raise TransientError(f"Kubernetes API error while trying to {what}: {status or ''} "
                                 f"{getattr(e, 'reason', e)}; check the cluster and retry") from None
        raise


# ---------------------------------------------------------------------------------------------- states

def job_state(job: dict | None) -> str:
    """NotSubmitted | Pending | Running | Succeeded | Failed from a Job's status."""
    if job is None:
        return "NotSubmitted"
    status = job.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conds or "SuccessCriteriaMet" in conds:
        return "Succeeded"
    if "Failed" in conds or "FailureTarget" in conds:
        return "Failed"
    if status.get("succeeded"):
        return "Succeeded"
    if status.get("active") or status.get("ready"):
        return "Running"
    return "Pending"


def failure_reason(job: dict | None) -> str:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True":
            return f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return ""


def _step_of(sweep: Sweep, job: dict) -> str | None:
    labels = (job.get("metadata") or {}).get("labels") or {}
    comp = labels.get("app.kubernetes.io/component")
    return labels.get(VARIANT_LABEL) if comp == "variant" else comp


def list_jobs(sweep: Sweep, apis: Apis, namespace: str | None = None) -> dict[str, dict]:
    """The sweep's Jobs by step: 'prepare', each variant name, 'aggregate'."""
    ns = namespace or sweep.kubernetes.namespace
    res = _call("list Jobs", apis.batch.list_namespaced_job, ns, label_selector=selector(sweep)) or {}
    out = {}
    for job in res.get("items") or []:
        step = _step_of(sweep, job)
        if step:
            out[step] = job
    return out


def job_states(sweep: Sweep, apis: Apis, namespace: str | None = None) -> dict[str, str]:
    """State of every step's Job ('prepare', variant names, 'aggregate'): for `aquarium sweep status --kubernetes`.
    Steps without a Job are 'NotSubmitted'."""
    jobs = list_jobs(sweep, apis, namespace)
    steps = ["prepare", *sweep.names, "aggregate"]
    return {s: job_state(jobs.get(s)) for s in steps}


def stop(sweep: Sweep, apis: Apis, namespace: str | None = None) -> list[str]:
    """Delete the sweep's Jobs (and, in the background, their pods). Results stay in the store."""
    ns = namespace or sweep.kubernetes.namespace
    deleted = []
    for job in list_jobs(sweep, apis, ns).values():
        name = job["metadata"]["name"]
        _call(f"delete Job {name}", apis.batch.delete_namespaced_job, name, ns, propagation_policy="Background")
        deleted.append(name)
    return sorted(deleted)


# ---------------------------------------------------------------------------------------------- pending watchdog

def _parse_time(value) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def unschedulable(pods: list[dict], now: datetime, timeout: float) -> list[tuple[str, str, float, str]]:
    """(job, pod, seconds, scheduler message) of pods Unschedulable for longer than timeout."""
    out = []
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Pending":
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                since = _parse_time(c.get("lastTransitionTime")) or _parse_time(
                    (pod.get("metadata") or {}).get("creationTimestamp"))
                waited = (now - since).total_seconds() if since else 0.0
                if waited > timeout:
                    meta = pod.get("metadata") or {}
                    job = (meta.get("labels") or {}).get("job-name") or (meta.get("labels") or {}).get(
                        "batch.kubernetes.io/job-name", "?")
                    out.append((job, meta.get("name", "?"), waited, (c.get("message") or "").strip()))
    return out


# ---------------------------------------------------------------------------------------------- submit

@dataclass
class SubmitResult:
    states: dict[str, str]  # step -> NotSubmitted|Pending|Running|Succeeded|Failed|Skipped
    created: list[str] = field(default_factory=list)  # Job names created by this submit
    warnings: list[str] = field(default_factory=list)  # pending-watchdog reports
    done: bool = False

    @property
    def exit_code(self) -> int:
        """0: every step succeeded (or was already done); 1: a step failed; 3: still running (--no-watch)."""
        if any(s == "Failed" for s in self.states.values()):
            return 1
        return 0 if self.done else 3


class Submitter:
    """One sweep on one namespace. `reconcile()` does one pass; `run(watch=True)` passes until the sweep ends."""

    def __init__(self, sweep: Sweep, config_text: str, apis: Apis, namespace: str | None = None,
                 store: str | None = None, source: str | None = None, endpoint: str | None = None,
                 store_obj=None, echo: Callable[[str], None] = print, poll_seconds: float = 10.0,
                 now: Callable[[], datetime] | None = None, sleep: Callable[[float], None] | None = None):
        self.sweep, self.apis, self.echo = sweep, apis, echo
        self.ns = namespace or sweep.kubernetes.namespace
        self.manifests = render(sweep, config_text, self.ns, store, source, endpoint)
        self.by_step = {}
        for m in self.manifests[1:]:
            self.by_step[_step_of(sweep, m)] = m
        self.store_uri = store or sweep.store
        self.endpoint = endpoint or sweep.endpoint
        self._store = store_obj
        self.poll_seconds = poll_seconds
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.sleep = sleep or (lambda seconds: time.sleep(seconds))
        self.limit = sweep.max_parallel or len(sweep.variants)
        self.skipped: set[str] | None = None
        self.created: list[str] = []
        self.reported: set[str] = set()
        self.warnings: list[str] = []
        self._last_table = ""

    # -- store -----------------------------------------------------------------------------------------------
    def finished_in_store(self) -> set[str]:
        """Variants whose store prefix has `_SUCCESS` with the spec's config hash: not submitted again."""
        if self.skipped is not None:
            return self.skipped
        from common import status
        from common.store import open_store

        done = set()
        try:
            store = self._store or open_store(self.store_uri, os.environ.get("AWS_ENDPOINT_URL") or self.endpoint)
            done = {v.name for v in self.sweep.variants if status.is_finished(store, self.sweep, v)}
        except (AquariumError, OSError) as e:
            self.echo(f"note: cannot read the store {self.store_uri} from here ({e}); finished variants will "
                      "skip themselves in their pods")
        self.skipped = done
        return done

    # -- cluster ---------------------------------------------------------------------------------------------
    def apply_configmap(self) -> None:
        cm = self.manifests[0]
        name = cm["metadata"]["name"]
        existing = _call(f"read ConfigMap {name}", self.apis.core.read_namespaced_config_map, name, self.ns)
        if existing is None:
            _call(f"create ConfigMap {name}", self.apis.core.create_namespaced_config_map, self.ns, cm)
        elif (existing.get("data") or {}) != cm["data"]:
            _call(f"update ConfigMap {name}", self.apis.core.replace_namespaced_config_map, name, self.ns, cm)

    def create(self, step: str) -> None:
        body = self.by_step[step]
        name = body["metadata"]["name"]
        try:
            _call(f"create Job {name}", self.apis.batch.create_namespaced_job, self.ns, body)
        except Exception as e:
            if _status(e) != 409:  # 409: someone else created it meanwhile -- fine, it is idempotent
                raise
        self.created.append(name)
        self.echo(f"created Job {name}")

    def check_conflicts(self, jobs: dict[str, dict]) -> None:
        """A variant Job left from a different config would be mistaken for this one: refuse, say what to do."""
        for v in self.sweep.variants:
            job = jobs.get(v.name)
            if job is None:
                continue
            old = ((job.get("metadata") or {}).get("labels") or {}).get(HASH_LABEL)
            if old and old != v.config_hash:
                raise BadInput(f"Job {job_name(self.sweep, v.name)} in namespace {self.ns} ran config {old} but the "
                               f"spec now says {v.config_hash}: run `aquarium sweep stop --config ...` first "
                               "(results stay in the store), then submit again")

    def watchdog(self) -> None:
        res = _call("list pods", self.apis.core.list_namespaced_pod, self.ns, label_selector=selector(self.sweep))
        timeout = self.sweep.kubernetes.pending_timeout_seconds
        for job, pod, waited, message in unschedulable((res or {}).get("items") or [], self.now(), timeout):
            if pod in self.reported:
                continue
            self.reported.add(pod)
            line = (f"warning: pod {pod} of Job {job} has been unschedulable for {waited:.0f} s "
                    f"(over kubernetes.pending_timeout_seconds={timeout}): {message or 'no message from the scheduler'}"
                    " -- free or add nodes with the requested resources, or lower the variant's resources")
            self.warnings.append(line)
            self.echo(line)

    # -- one pass ----------------------------------------------------------------------------------------------
    def reconcile(self) -> SubmitResult:
        self.apply_configmap()
        jobs = list_jobs(self.sweep, self.apis, self.ns)
        self.check_conflicts(jobs)
        states = {s: job_state(jobs.get(s)) for s in ["prepare", *self.sweep.names, "aggregate"]}
        if states["prepare"] == "NotSubmitted":
            self.create("prepare")
            states["prepare"] = "Pending"
        if states["prepare"] == "Succeeded":
            skipped = self.finished_in_store()
            for name in self.sweep.names:
                if name in skipped and states[name] == "NotSubmitted":
                    states[name] = "Skipped"
            active = sum(states[n] in ("Pending", "Running") for n in self.sweep.names)
            for name in self.sweep.names:
                if active >= self.limit:
                    break
                if states[name] == "NotSubmitted":
                    self.create(name)
                    states[name] = "Pending"
                    active += 1
            variants_over = all(states[n] in TERMINAL for n in self.sweep.names)
            any_ok = any(states[n] in ("Succeeded", "Skipped") for n in self.sweep.names)
            if variants_over and any_ok and states["aggregate"] == "NotSubmitted":
                self.create("aggregate")
                states["aggregate"] = "Pending"
        elif states["prepare"] == "Failed":
            for name in self.sweep.names + ["aggregate"]:
                if states[name] == "NotSubmitted":
                    states[name] = "Skipped"
        variants_over = all(states[n] in TERMINAL for n in self.sweep.names)
        if variants_over and not any(states[n] in ("Succeeded", "Skipped") for n in self.sweep.names) \
                and states["aggregate"] == "NotSubmitted":
            states["aggregate"] = "Skipped"  # nothing to aggregate: every variant failed
        self.watchdog()
        done = states["prepare"] == "Failed" or states["aggregate"] in TERMINAL
        return SubmitResult(states, list(self.created), list(self.warnings), done)

    def table(self, states: dict[str, str], jobs: dict[str, dict] | None = None) -> str:
        jobs = jobs or {}
        rows = [("step", "job", "state", "detail")]
        for step in ["prepare", *self.sweep.names, "aggregate"]:
            state = states.get(step, "NotSubmitted")
            detail = failure_reason(jobs.get(step)) if state == "Failed" else (
                "finished in the store (same config hash)" if state == "Skipped" and step in (self.skipped or ())
                else "")
            rows.append((step, job_name(self.sweep, step), state, detail))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}".rstrip() for r in rows)

    def run(self, watch: bool = True, max_passes: int | None = None) -> SubmitResult:
        passes = 0
        while True:
            result = self.reconcile()
            passes += 1
            table = self.table(result.states, list_jobs(self.sweep, self.apis, self.ns))
            if table != self._last_table:
                self.echo(table)
                self._last_table = table
            if result.done or not watch or (max_passes and passes >= max_passes):
                return result
            self.sleep(self.poll_seconds)


def submit(sweep: Sweep, config_text: str, apis: Apis, watch: bool = True, **kwargs) -> SubmitResult:
    return Submitter(sweep, config_text, apis, **kwargs).run(watch=watch)
