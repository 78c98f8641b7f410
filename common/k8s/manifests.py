"""What the cluster gets: k8s/job.yaml filled from the resolved spec, one Job per step, and the names and labels
that tie the sweep's objects together.

    render(sweep, config_text)   the spec ConfigMap (content-named, immutable) + prepare Job + one Job per variant +
                                 aggregate Job, as dicts: k8s/job.yaml loaded with pyyaml, only the FILLED values
                                 set from the (resolved) spec; every container's args are `job_argv(...)`
    render_driver(...)           the Job that runs the submitter itself in the cluster (`sweep submit --detach`)
    render_rbac, write_manifests k8s/rbac.yaml for a namespace; `plan --out`'s files
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import yaml

from common.config import Resources, Sweep, Variant, parse_sweep
from common.errors import AquariumError, BadInput
from common.executor import PASSED_SETTINGS, job_argv

CONFIG_DIR = "/etc/aquarium"
CONFIG_KEY = "sweep.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
CONTAINER = "aquarium"
APP = "aquarium-sweep"
SUBMITTER_SA = "aquarium-sweep-submitter"  # k8s/rbac.yaml: the ServiceAccount bound to the submitter Role
SWEEP_LABEL = "aquarium-sweep/sweep"
VARIANT_LABEL = "aquarium-sweep/variant"
HASH_LABEL = "aquarium-sweep/config-hash"
SPEC_LABEL = "aquarium-sweep/spec"  # the spec ConfigMap a Job was rendered with
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
DRIVER_RESOURCES = Resources(gpu=0, cpu="250m", memory="512Mi")
# What render() sets in k8s/job.yaml; every other value of the template is what the cluster gets.
FILLED = ("metadata.name", "metadata.namespace", "metadata.labels", "spec.backoffLimit",
          "spec.ttlSecondsAfterFinished", "spec.template.metadata.labels", "spec.template.spec.serviceAccountName",
          "container.image", "container.imagePullPolicy", "container.args", "container.env", "container.resources",
          "volume.spec", "volume.tmp")


def templates_dir() -> Path:
    """k8s/ beside the code (a checkout or the image's /app), or AQUARIUM_K8S_DIR."""
    env = os.environ.get("AQUARIUM_K8S_DIR")
    for d in [Path(env)] if env else [Path(__file__).resolve().parents[2] / "k8s", Path.cwd() / "k8s"]:
        if (d / "job.yaml").is_file():
            return d
    raise BadInput(f"Job template not found (looked for k8s/job.yaml beside {Path(__file__).resolve().parents[2]} "
                   "and in the current directory): run from a checkout or set AQUARIUM_K8S_DIR")


def _template(name: str) -> dict:
    return yaml.safe_load((templates_dir() / name).read_text())


def is_s3(uri: str) -> bool:
    """The one test for an S3 URI here (parsing it is common/store.py's job)."""
    return uri.startswith("s3://")


# ---------------------------------------------------------------------------------------------- names and labels

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


def _step_of(obj: dict) -> str | None:
    """'prepare', a variant's name, 'aggregate' or 'driver', from a Job's or pod's labels."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    comp = labels.get("app.kubernetes.io/component")
    return labels.get(VARIANT_LABEL) if comp == "variant" else comp


def _identity(obj: dict) -> str | None:
    """What makes a step's result current: a variant's config hash, else the spec ConfigMap it was rendered with."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(HASH_LABEL) or labels.get(SPEC_LABEL)


def container_of(job: dict) -> dict:
    (c,) = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER]
    return c


# ---------------------------------------------------------------------------------------------- render

def _env(sweep: Sweep, template_env: list[dict], gpu: int) -> list[dict]:
    """The template's env plus the S3 endpoint, AQUARIUM_WEIGHTS / AQUARIUM_PRECISION when the submitter has them,
    the S3 Secret's keys (never literal values) and, on GPU pods, TF_FORCE_GPU_ALLOW_GROWTH."""
    env = list(template_env)
    if gpu:
        env.append({"name": "TF_FORCE_GPU_ALLOW_GROWTH", "value": "true"})
    if sweep.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": sweep.endpoint})
    for name in PASSED_SETTINGS:  # the submitter's own, as the endpoint: ImageNet weights staged in S3, precision
        if os.environ.get(name):
            env.append({"name": name, "value": os.environ[name]})
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
    out += [variant_job(sweep, v, config_text, spec) for v in sweep.variants]
    out.append(_job(sweep, "aggregate", "aggregate", job_argv(sweep, "aggregate", CONFIG_PATH, store=fw["store"]),
                    k.job_resources, spec))
    return out


def variant_job(sweep: Sweep, variant: Variant, config_text: str, spec: str) -> dict:
    """One variant's Job (also a search's trial, rendered when its driver asks it)."""
    argv = job_argv(sweep, variant.job, CONFIG_PATH, variant=variant.name, store=_forwarded(sweep, config_text)["store"])
    return _job(sweep, variant.name, "variant", argv, variant.resources, spec, variant)


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
