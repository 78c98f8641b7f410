"""`aquarium sweep plan`: what would go wrong on a cluster, found offline before anything is submitted -- one
small check per topic (store, source, endpoint, image, variants, resources, polling) and the official OpenAPI
schemas of the oldest supported and the current Kubernetes. Each problem is one line: what, where, how to fix."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from common.config import Sweep
from common.k8s.manifests import is_s3, job_name, render_driver

SCHEMA_VERSION = "1.33.0"  # the current Kubernetes version whose OpenAPI schema `plan` validates against
MIN_VERSION = "1.29.0"  # the oldest supported: podFailurePolicy's FailJob rule and podReplacementPolicy by default
RESERVED = ("prepare", "aggregate", "spec", "state", "driver")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[mkMGTPE]|[eE][+-]?\d+)?$")


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


def _check_weights(sweep: Sweep, p: Problems) -> None:
    where = os.environ.get("AQUARIUM_WEIGHTS", "")
    if where and not is_s3(where) and any(v.kind == "finetune" and v.weights == "imagenet" for v in sweep.variants):
        p.error(f"AQUARIUM_WEIGHTS={where} is a local folder: pods cannot read it; upload its weights files once "
                "to s3://BUCKET/weights/ and set AQUARIUM_WEIGHTS=s3://BUCKET/weights/")


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
    for check in (_check_store, _check_source, _check_endpoint, _check_weights, _check_image, _check_variants,
                  _check_resources, _check_polling):
        check(sweep, p)
    _check_schema(manifests + [render_driver(sweep, manifests)], p)
    return p.errors, p.warnings
