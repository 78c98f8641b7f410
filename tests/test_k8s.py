"""Kubernetes: rendered manifests against the official OpenAPI schemas (kubernetes-validate, offline), the policies
every Job must carry, `aquarium sweep plan` errors, and the submitter against an in-memory fake API.

No cluster is reachable in CI: the fake below implements the BatchV1Api/CoreV1Api methods common/k8s/ calls and
simulates Jobs running, finishing, failing and pods the scheduler cannot place."""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException

from common import k8s
from common.k8s.api import _plain
from common import status
from common.config import Sweep, load_sweep, parse_sweep
from common.errors import BadInput, TransientError
from common.executor import job_argv
from common.store import open_store

ROOT = Path(__file__).resolve().parent.parent
S3 = "s3://aquarium-test/store"
SRC = "https://example.org/aquarium.zip"


@pytest.fixture(autouse=True)
def no_endpoint_from_the_environment(monkeypatch):
    """The rendered manifests follow `--endpoint` > AWS_ENDPOINT_URL > the spec: these tests pin the spec's case,
    whatever the developer's shell (or an earlier test) has set."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AQUARIUM_WEIGHTS", "AQUARIUM_PRECISION"):
        monkeypatch.delenv(name, raising=False)


def spec(name: str) -> tuple:
    path = ROOT / name
    return load_sweep(path), path.read_text()


def resolved(raw: dict, store=S3, source=SRC, **kube) -> Sweep:
    """The sweep as jobs/ resolves it: command-line store/source and kubernetes settings applied, validated."""
    raw = copy.deepcopy(raw)
    if store:
        raw["store"] = store
    if source:
        raw["dataset"]["source"] = source
    raw.setdefault("kubernetes", {}).update(kube)
    return parse_sweep(raw)


def raw_of(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def rendered(name: str, store=S3, source=SRC, **kube):
    """(resolved sweep, the spec's text, manifests) of a spec file with command-line overrides."""
    text = (ROOT / name).read_text()
    sweep = resolved(yaml.safe_load(text), store, source, **kube)
    return sweep, text, k8s.render(sweep, text)


def rendered_raw(raw: dict, store=S3, source=SRC, **kube):
    text = yaml.safe_dump(raw)
    sweep = resolved(raw, store, source, **kube)
    return sweep, text, k8s.render(sweep, text)


def jobs_of(manifests):
    return [m for m in manifests if m["kind"] == "Job"]


def container(job):
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")
    yield path, obj


# ------------------------------------------------------------------------------------------------ rendering

@pytest.mark.parametrize("name", ["sweep.yaml", "smoke.yaml"])
def test_every_manifest_is_valid_against_the_official_schema(name):
    sweep, _, manifests = rendered(name)
    assert [m["kind"] for m in manifests] == ["ConfigMap"] + ["Job"] * (len(sweep.variants) + 2)
    for m in manifests:
        assert k8s.validate_schema(m) is None, m["metadata"]["name"]
    errors, _ = k8s.plan_problems(sweep, manifests, name)
    assert errors == []


def test_schema_validation_really_rejects_a_bad_manifest():
    _, _, manifests = rendered("smoke.yaml")
    bad = copy.deepcopy(manifests[1])
    container(bad)["resources"]["limit"] = {"cpu": "1"}  # typo: not a field
    why = k8s.validate_schema(bad)
    assert why and "limit" in why
    bad = copy.deepcopy(manifests[1])
    del bad["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"]
    assert "status" in k8s.validate_schema(bad)


def test_names_order_and_args_equal_job_argv():
    sweep, _, manifests = rendered("sweep.yaml")
    jobs = jobs_of(manifests)
    assert [j["metadata"]["name"] for j in jobs] == (
        ["aquarium-prepare"] + [f"aquarium-{v}" for v in sweep.names] + ["aquarium-aggregate"])
    assert container(jobs[0])["args"] == job_argv(sweep, "prepare", k8s.CONFIG_PATH, store=S3, source=SRC)
    for job, v in zip(jobs[1:-1], sweep.variants):
        assert container(job)["args"] == job_argv(sweep, v.job, k8s.CONFIG_PATH, variant=v.name, store=S3)
    assert container(jobs[-1])["args"] == job_argv(sweep, "aggregate", k8s.CONFIG_PATH, store=S3)
    kinds = {container(j)["args"][0] for j in jobs[1:-1]}
    assert kinds == {"train-variant", "finetune-variant"}
    # without overrides the args carry no --store/--source: the pods read them from the spec
    text = yaml.safe_dump(dict(raw_of("sweep.yaml"), store=S3, dataset={"source": SRC}))
    plain = k8s.render(parse_sweep(yaml.safe_load(text)), text)
    assert container(plain[1])["args"] == ["prepare", "--config", k8s.CONFIG_PATH]


def test_configmap_carries_the_spec_verbatim_and_every_pod_mounts_it():
    sweep, text, manifests = rendered("sweep.yaml", namespace="team-a")
    cm = manifests[0]
    assert cm["data"] == {"sweep.yaml": text} and cm["metadata"]["namespace"] == "team-a"
    for job in jobs_of(manifests):
        assert job["metadata"]["namespace"] == "team-a"
        pod = job["spec"]["template"]["spec"]
        vol = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container(job)["volumeMounts"]}
        assert mounts["/etc/aquarium"]["readOnly"] is True
        assert vol[mounts["/etc/aquarium"]["name"]]["configMap"]["name"] == cm["metadata"]["name"]


def test_gpu_limits_on_gpu_variants_only_with_node_selector_and_tolerations():
    raw = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    raw["kubernetes"]["node_selector"] = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    raw["variants"][0]["resources"] = {"gpu": 0, "cpu": "2", "memory": "4Gi"}
    sweep, _, manifests = rendered_raw(raw)
    jobs = jobs_of(manifests)
    by_name = {j["metadata"]["name"]: j for j in jobs}
    for v in sweep.variants:
        job = by_name[f"aquarium-{v.name}"]
        limits = container(job)["resources"]["limits"]
        pod = job["spec"]["template"]["spec"]
        if v.resources.gpu:
            assert limits["nvidia.com/gpu"] == v.resources.gpu == 1
            assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert "nvidia.com/gpu" not in limits and "nodeSelector" not in pod and "tolerations" not in pod
        assert container(job)["resources"]["requests"] == {"cpu": v.resources.cpu, "memory": v.resources.memory}
        assert limits["cpu"] == v.resources.cpu and limits["memory"] == v.resources.memory
    for step in ("prepare", "aggregate"):
        res = container(by_name[f"aquarium-{step}"])["resources"]
        assert "nvidia.com/gpu" not in res["limits"]
        assert res["requests"] == {"cpu": sweep.kubernetes.job_resources.cpu,
                                   "memory": sweep.kubernetes.job_resources.memory}
    smoke_jobs = jobs_of(rendered("smoke.yaml")[2])
    assert not any("nvidia.com/gpu" in container(j)["resources"]["limits"] for j in smoke_jobs)


def test_every_job_has_failure_policy_deadlines_and_restart_never():
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["kubernetes"].update(backoff_limit=5, active_deadline_seconds=3600, ttl_seconds_after_finished=120,
                             termination_grace_seconds=240)
    sweep, _, manifests = rendered_raw(raw)
    for job in jobs_of(manifests):
        spec = job["spec"]
        variant = job["metadata"]["labels"]["app.kubernetes.io/component"] == "variant"
        # variants get the spec's deadline; prepare and aggregate keep the template's 7200 s (issue 12)
        assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (
            5, 3600 if variant else 7200, 120)
        assert spec["template"]["spec"]["restartPolicy"] == "Never"
        rules = spec["podFailurePolicy"]["rules"]
        ignore = [r for r in rules if r["action"] == "Ignore"]
        fail = [r for r in rules if r["action"] == "FailJob"]
        assert ignore[0]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
        assert fail[0]["onExitCodes"] == {"containerName": "aquarium", "operator": "In", "values": [2]}
        if job["metadata"]["labels"]["app.kubernetes.io/component"] == "variant":
            assert spec["template"]["spec"]["terminationGracePeriodSeconds"] == 240


def test_labels_and_optional_kueue_queue():
    sweep, _, manifests = rendered("sweep.yaml")
    for job in jobs_of(manifests):
        for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
            assert labels["app.kubernetes.io/name"] == "aquarium-sweep"
            assert labels["app.kubernetes.io/instance"] == "aquarium"
            assert labels["app.kubernetes.io/component"] in ("prepare", "variant", "aggregate")
            assert labels[k8s.SWEEP_LABEL] == "aquarium"
        assert k8s.QUEUE_LABEL not in job["metadata"]["labels"]
    variant_jobs = [j for j in jobs_of(manifests) if j["metadata"]["labels"]["app.kubernetes.io/component"] == "variant"]
    assert [j["metadata"]["labels"][k8s.VARIANT_LABEL] for j in variant_jobs] == sweep.names
    assert [j["metadata"]["labels"][k8s.HASH_LABEL] for j in variant_jobs] == [v.config_hash for v in sweep.variants]
    raw = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    raw["kubernetes"]["queue"] = "gpu-queue"
    queued = rendered_raw(raw)[2]
    assert all(j["metadata"]["labels"][k8s.QUEUE_LABEL] == "gpu-queue" for j in jobs_of(queued))


def test_no_literal_credentials_anywhere(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECRETVALUE1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["endpoint"] = "http://minio.aquarium.svc:9000"
    sweep, _, manifests = rendered_raw(raw)
    dumped = yaml.safe_dump_all(manifests)
    assert "AKIASECRETVALUE1" not in dumped and "very-secret-value" not in dumped
    for job in jobs_of(manifests):
        env = {e["name"]: e for e in container(job)["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[name]
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "aquarium-s3", "key": name}
        assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": "http://minio.aquarium.svc:9000"}
        for e in container(job)["env"]:
            if any(w in e["name"] for w in ("KEY", "SECRET", "TOKEN", "PASSWORD")):
                assert "value" not in e, e
        for ref in container(job).get("envFrom", []):
            assert set(ref) <= {"secretRef", "prefix"}


def test_security_context_read_only_root_and_writable_tmp():
    for job in jobs_of(rendered("sweep.yaml")[2]):
        pod = job["spec"]["template"]["spec"]
        c = container(job)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in vols[mounts["/tmp"]] and "emptyDir" in vols[mounts["/home/app"]]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["HOME"] == "/home/app" and env["MPLCONFIGDIR"].startswith("/tmp/")


def test_rbac_is_least_privilege_and_valid():
    docs = k8s.render_rbac("team-a")
    for d in docs:
        assert d["metadata"]["namespace"] == "team-a"
        assert k8s.validate_schema(d) is None
    (role,) = [d for d in docs if d["kind"] == "Role"]
    rights = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    # exactly what common/k8s/ calls (tests/test_k8s.py's fake records every call)
    assert rights == {("batch", "jobs"): {"get", "list", "create", "delete"},
                      ("", "configmaps"): {"get", "list", "create", "update", "delete"},
                      ("", "pods"): {"list"}, ("", "pods/log"): {"get"}, ("", "events"): {"list"},
                      ("kueue.x-k8s.io", "workloads"): {"list"}}
    assert "*" not in set().union(*rights.values()) and "secrets" not in {r for _, r in rights}
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["subjects"][0]["namespace"] == "team-a"
    pods_sa = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "aquarium-sweep"]
    assert pods_sa and pods_sa[0]["automountServiceAccountToken"] is False


def test_local_dev_manifests_are_valid():
    for path in sorted((ROOT / "k8s" / "local").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert k8s.validate_schema(doc) is None, path.name
    secret = yaml.safe_load((ROOT / "k8s/local/minio-secret.yaml").read_text())
    assert "DEV-ONLY" in (ROOT / "k8s/local/minio-secret.yaml").read_text()
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "dev-only-credentials"


def _drop(job: dict) -> dict:
    """A Job without the values k8s.FILLED says the renderer sets (and a variant's deadline and grace period)."""
    job = copy.deepcopy(job)
    for path in ("metadata.name", "metadata.namespace", "metadata.labels", "spec.backoffLimit",
                 "spec.ttlSecondsAfterFinished", "spec.template.metadata.labels",
                 "spec.template.spec.serviceAccountName"):
        *parents, last = path.split(".")
        node = job
        for p in parents:
            node = node[p]
        node.pop(last, None)
    c = container(job)
    for key in ("image", "imagePullPolicy", "args", "env", "resources"):
        c.pop(key)
    for vol in job["spec"]["template"]["spec"]["volumes"]:
        vol.get("configMap", {}).pop("name", None)
        if vol["name"] == "tmp":
            vol["emptyDir"] = {}
    return job


def test_one_template_every_unfilled_value_is_what_the_cluster_gets():
    template = yaml.safe_load((ROOT / "k8s/job.yaml").read_text())
    assert sorted(p.name for p in (ROOT / "k8s").glob("*job*.yaml")) == ["job.yaml"]
    sweep, _, manifests = rendered("smoke.yaml")
    prepare, *variants, aggregate = jobs_of(manifests)
    for job in (prepare, aggregate):
        assert _drop(job) == _drop(template)
        assert job["spec"]["activeDeadlineSeconds"] == template["spec"]["activeDeadlineSeconds"] == 7200
    for job in variants:
        expected = _drop(template)
        expected["spec"]["activeDeadlineSeconds"] = sweep.kubernetes.active_deadline_seconds
        expected["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = sweep.kubernetes.termination_grace_seconds
        assert _drop(job) == expected
    assert set(k8s.FILLED) >= {"metadata.name", "container.args", "container.resources"}


def test_spec_configmap_is_content_named_immutable_and_each_job_points_at_its_own():
    sweep, text, manifests = rendered("smoke.yaml")
    cm = manifests[0]
    assert cm["immutable"] is True and cm["metadata"]["name"] == k8s.spec_name(sweep, text)
    changed = rendered_raw(dict(raw_of("smoke.yaml"), max_parallel=1))[2]
    assert changed[0]["metadata"]["name"] != cm["metadata"]["name"]
    for job in jobs_of(manifests):
        vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert vols["spec"]["configMap"]["name"] == cm["metadata"]["name"]
        assert job["metadata"]["labels"][k8s.SPEC_LABEL] == cm["metadata"]["name"]


def test_cluster_fit_options_ephemeral_storage_uids_and_token():
    sweep, _, manifests = rendered("smoke.yaml", cluster_assigns_uid=True, mount_service_account_token=True)
    for job in jobs_of(manifests):
        pod = job["spec"]["template"]["spec"]
        assert set(pod["securityContext"]) == {"runAsNonRoot", "seccompProfile"}
        assert pod["automountServiceAccountToken"] is True
        res = container(job)["resources"]
        assert res["requests"]["ephemeral-storage"] == res["limits"]["ephemeral-storage"] == "2Gi"
        assert k8s.validate_schema(job) is None
    plain = jobs_of(rendered("smoke.yaml")[2])[0]["spec"]["template"]["spec"]
    assert plain["securityContext"]["runAsUser"] == 10001 and plain["automountServiceAccountToken"] is False
    assert "ephemeral-storage" not in container(jobs_of(rendered("sweep.yaml")[2])[0])["resources"]["requests"]


def test_smoke_prepare_and_aggregate_fit_a_small_kind_node():
    sweep, _, manifests = rendered("smoke.yaml")
    for job in (jobs_of(manifests)[0], jobs_of(manifests)[-1]):
        limits = container(job)["resources"]["limits"]
        assert limits["cpu"] == "1" and limits["memory"] == "1536Mi"


def test_driver_job_runs_the_submitter_as_its_service_account():
    sweep, text, manifests = rendered("smoke.yaml", image="reg.example/aq:1", namespace="ml",
                                      poll_seconds=5, pull_timeout_seconds=120)
    driver = k8s.render_driver(sweep, manifests)
    pod = driver["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "aquarium-sweep-submitter" and pod["automountServiceAccountToken"] is True
    args = container(driver)["args"]
    assert args[:3] == ["sweep", "submit", "--driver"]
    assert {"--namespace": "ml", "--image": "reg.example/aq:1", "--store": S3, "--source": SRC,
            "--poll-seconds": "5.0", "--pull-timeout": "120"}.items() <= dict(zip(args[3::2], args[4::2])).items()
    assert k8s.QUEUE_LABEL not in driver["metadata"]["labels"] and k8s.validate_schema(driver) is None
    names = {d["metadata"]["name"] for d in k8s.render_rbac("ml")}
    assert "aquarium-sweep-submitter" in names


def test_minimum_version_is_checked_too():
    sweep, _, manifests = rendered("smoke.yaml")
    job = jobs_of(manifests)[0]
    assert k8s.validate_schema(job, k8s.MIN_VERSION) is None
    assert k8s.validate_schema(job, "1.28.0") is not None  # the FailJob rule needs onPodConditions before 1.29


# ------------------------------------------------------------------------------------------------ plan

def run_cli(*args):
    from jobs.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_plan_refuses_a_file_store_with_a_clear_one_line_error():
    res = run_cli("sweep", "plan", "--config", str(ROOT / "smoke.yaml"), "--source", SRC)
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "file://./store" in errors[0] and "s3://BUCKET/PREFIX" in errors[0] and "store" in errors[0]


def test_pods_get_the_submitters_weights_and_precision_settings_and_plan_refuses_a_local_weights_folder(
        monkeypatch, tmp_path):
    """AQUARIUM_WEIGHTS / AQUARIUM_PRECISION travel to every pod like the S3 endpoint; a local folder cannot."""
    monkeypatch.setenv("AQUARIUM_WEIGHTS", "s3://aquarium-test/weights/")
    monkeypatch.setenv("AQUARIUM_PRECISION", "float32")
    sweep, _, manifests = rendered("smoke.yaml")
    for job in jobs_of(manifests):
        env = {e["name"]: e.get("value") for e in container(job)["env"]}
        assert env["AQUARIUM_WEIGHTS"] == "s3://aquarium-test/weights/" and env["AQUARIUM_PRECISION"] == "float32"
    assert k8s.plan_problems(sweep, manifests, "smoke.yaml")[0] == []
    monkeypatch.setenv("AQUARIUM_WEIGHTS", str(tmp_path))
    errors, _ = k8s.plan_problems(sweep, k8s.render(*rendered("smoke.yaml")[:2]), "smoke.yaml")
    assert errors == [f"smoke.yaml: AQUARIUM_WEIGHTS={tmp_path} is a local folder: pods cannot read it; upload its "
                      "weights files once to s3://BUCKET/weights/ and set AQUARIUM_WEIGHTS=s3://BUCKET/weights/"]


def test_plan_refuses_a_local_dataset_and_bad_quantities():
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["defaults"]["resources"]["memory"] = "2GB"
    raw["variants"].append({"name": "aggregate"})
    sweep, _, manifests = rendered_raw(raw, source=None)
    errors, _ = k8s.plan_problems(sweep, manifests, "smoke.yaml")
    text = "\n".join(errors)
    assert "dataset.source is the local file 'aquarium-tfcsv.zip'" in text
    assert "'2GB' is not a Kubernetes quantity" in text
    assert "variant name 'aggregate' clashes" in text


def test_plan_warns_about_gpu_variants_on_a_cpu_image_and_loopback_endpoints():
    raw = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    raw["kubernetes"]["image"] = "ghcr.io/x/aquarium-sweep:cpu"
    raw["endpoint"] = "http://127.0.0.1:9000"
    sweep, _, manifests = rendered_raw(raw)
    errors, warnings = k8s.plan_problems(sweep, manifests, "s.yaml")
    assert errors == []
    assert any("look" in w and "CPU build" in w for w in warnings)
    assert any("loopback" in w for w in warnings)


def test_plan_with_s3_store_writes_manifests_that_round_trip(tmp_path):
    out = tmp_path / "plan"
    res = run_cli("sweep", "plan", "--config", str(ROOT / "sweep.yaml"), "--store", S3, "--source", SRC,
                  "--namespace", "ml", "--image", "registry.example/aquarium-sweep:1.2.3", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "plan ok" in res.output
    files = sorted(p.name for p in out.iterdir())
    assert files[0] == "00-spec.yaml" and "rbac.yaml" in files and len(files) == 1 + 2 + len(load_sweep(ROOT / "sweep.yaml").variants) + 1
    job = yaml.safe_load((out / "02-cnn-a.yaml").read_text())
    assert job["metadata"]["namespace"] == "ml"
    assert container(job)["image"] == "registry.example/aquarium-sweep:1.2.3"
    expect = rendered("sweep.yaml", image="registry.example/aquarium-sweep:1.2.3", namespace="ml")[2]
    assert job == expect[2]


def test_plan_refuses_a_ttl_shorter_than_three_polls():
    sweep, _, manifests = rendered("smoke.yaml", ttl_seconds_after_finished=20, poll_seconds=10)
    errors, _ = k8s.plan_problems(sweep, manifests, "smoke.yaml")
    assert any("ttl_seconds_after_finished 20 is shorter than three polls" in e for e in errors)
    sweep, _, manifests = rendered("smoke.yaml", ttl_seconds_after_finished=30, poll_seconds=10)
    assert k8s.plan_problems(sweep, manifests, "smoke.yaml")[0] == []


# ------------------------------------------------------------------------------------------------ fake API

def _match(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    return all(labels.get(k) == v for k, v in (part.split("=", 1) for part in selector.split(",")))


T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeCluster:
    """In-memory BatchV1Api + CoreV1Api + CustomObjectsApi (the methods common/k8s/ uses). Every call is recorded
    with its request timeout. `tick()` advances a minute: a created Job's pod becomes ready, and Jobs created at
    least `runtime` ticks ago finish (Failed if listed in `fail`, with exit code 2). Jobs listed in `unschedulable`
    keep a Pending pod with the scheduler's message; in `waiting` a container waiting {job: (reason, message)};
    in `failed_create` no pod and a FailedCreate event; in `mount` a FailedMount event; in `suspended` a Job
    Kueue keeps suspended with a Workload condition."""

    def __init__(self, runtime: int = 1, fail=(), unschedulable=(), waiting=None, failed_create=None, mount=None,
                 suspended=(), namespaces=("aquarium", "ml", "team-b")):
        self.jobs: dict[tuple[str, str], dict] = {}
        self.configmaps: dict[tuple[str, str], dict] = {}
        self.events: list[tuple] = []
        self.calls: list[tuple[str, Any]] = []
        self.runtime, self.fail, self.unschedulable = runtime, set(fail), set(unschedulable)
        self.waiting, self.failed_create, self.mount = waiting or {}, failed_create or {}, mount or {}
        self.suspended, self.namespaces = set(suspended), set(namespaces)
        self.ticks = 0
        self.max_active_variants = 0
        self.uids = 0

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if not name.startswith("_") and name.endswith(("_job", "_map", "_pod", "_event", "_object", "_log")) \
                and callable(attr):
            def recorded(*args, _request_timeout=None, **kwargs):
                self.calls.append((name, _request_timeout))
                return attr(*args, **kwargs)
            return recorded
        return attr

    def _ns(self, namespace):
        """NamespaceLifecycle admission: a create in a missing namespace is 404 with this Status message."""
        if namespace not in self.namespaces:
            err = ApiException(status=404, reason="Not Found")
            err.body = json.dumps({"kind": "Status", "message": f'namespaces "{namespace}" not found'})
            raise err

    # -- batch/v1
    def list_namespaced_job(self, namespace, label_selector=None):
        return {"items": [copy.deepcopy(j) for (ns, _), j in sorted(self.jobs.items())
                          if ns == namespace and _match(j["metadata"].get("labels", {}), label_selector)]}

    def read_namespaced_job(self, name, namespace):
        if (namespace, name) not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.jobs[(namespace, name)])

    def create_namespaced_job(self, namespace, body):
        name = body["metadata"]["name"]
        self._ns(namespace)
        if (namespace, name) in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        assert body["metadata"]["namespace"] == namespace
        job = copy.deepcopy(body)
        self.uids += 1
        job["metadata"]["uid"] = f"uid-{self.uids}"
        if name in self.suspended:
            job["spec"]["suspend"] = True
        job["status"] = {} if name in self.failed_create or name in self.suspended else {"active": 1}
        job["_created"] = self.ticks
        self.jobs[(namespace, name)] = job
        self.events.append(("create", name))
        self._count_active()

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        assert propagation_policy == "Foreground"
        if (namespace, name) not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        self.jobs[(namespace, name)]["metadata"]["deletionTimestamp"] = self.now().isoformat()
        self.events.append(("delete", name))

    # -- core/v1
    def read_namespaced_config_map(self, name, namespace):
        if (namespace, name) not in self.configmaps:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.configmaps[(namespace, name)])

    def create_namespaced_config_map(self, namespace, body):
        self._ns(namespace)
        if (namespace, body["metadata"]["name"]) in self.configmaps:
            raise ApiException(status=409, reason="AlreadyExists")
        self.configmaps[(namespace, body["metadata"]["name"])] = copy.deepcopy(body)
        self.events.append(("configmap", body["metadata"]["name"]))

    def replace_namespaced_config_map(self, name, namespace, body):
        assert not self.configmaps[(namespace, name)].get("immutable"), "immutable ConfigMap replaced"
        self.configmaps[(namespace, name)] = copy.deepcopy(body)
        self.events.append(("configmap-update", name))

    def list_namespaced_config_map(self, namespace, label_selector=None):
        return {"items": [copy.deepcopy(c) for (ns, _), c in sorted(self.configmaps.items())
                          if ns == namespace and _match(c["metadata"].get("labels", {}), label_selector)]}

    def delete_namespaced_config_map(self, name, namespace):
        self.configmaps.pop((namespace, name))
        self.events.append(("configmap-delete", name))

    def list_namespaced_pod(self, namespace, label_selector=None):
        return {"items": [self._pod(name, job) for (ns, name), job in sorted(self.jobs.items())
                          if ns == namespace and (job.get("status") or {}).get("active")
                          and _match(job["spec"]["template"]["metadata"]["labels"], label_selector)]}

    def _pod(self, name: str, job: dict) -> dict:
        labels = job["spec"]["template"]["metadata"]["labels"]
        since = self.created_at(job).isoformat().replace("+00:00", "Z")
        pod = {"metadata": {"name": f"{name}-x7k2p", "creationTimestamp": since,
                            "labels": {**labels, "job-name": name, "batch.kubernetes.io/job-name": name}},
               "status": {"phase": "Running" if job["status"].get("ready") else "Pending"}}
        if name in self.unschedulable:
            pod["status"]["conditions"] = [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": since,
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are "
                           "available: 3 No preemption victims found for incoming pod."}]
        elif name in self.waiting or name in self.mount:
            reason, message = self.waiting.get(name, ("ContainerCreating", ""))
            pod["status"].update(conditions=[{"type": "PodScheduled", "status": "True", "lastTransitionTime": since}],
                                 containerStatuses=[{"name": "aquarium", "ready": False, "state": {
                                     "waiting": {"reason": reason, "message": message}}}])
        return pod

    def list_namespaced_event(self, namespace, field_selector=None):
        fields = dict(part.split("=", 1) for part in field_selector.split(","))
        kind, reason = fields["involvedObject.kind"], fields["reason"]
        source = self.failed_create if reason == "FailedCreate" else self.mount
        return {"items": [{"involvedObject": {"kind": kind, "name": name if kind == "Job" else f"{name}-x7k2p"},
                           "reason": reason, "type": "Warning", "message": msg,
                           "lastTimestamp": self.now().isoformat()}
                          for (ns, name), _ in self.jobs.items() if ns == namespace
                          for msg in [source.get(name)] if msg]}

    def read_namespaced_pod_log(self, name, namespace, container=None):
        assert container == "aquarium"
        return f"log of {name}\n"

    # -- kueue.x-k8s.io (CustomObjectsApi)
    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=None):
        assert (group, plural) == ("kueue.x-k8s.io", "workloads")
        uid = label_selector.split("=", 1)[1]
        return {"items": [{"status": {"conditions": [{
            "type": "QuotaReserved", "status": "False", "reason": "Pending",
            "message": "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu "
                       "in flavor default-flavor, 1 more needed"}]}}
            for job in self.jobs.values() if job["metadata"].get("uid") == uid]}

    # -- simulation
    def created_at(self, job) -> datetime:
        return T0 + timedelta(minutes=job["_created"])

    def now(self) -> datetime:
        return T0 + timedelta(minutes=self.ticks)

    def _count_active(self):
        n = sum(1 for j in self.jobs.values() if j["metadata"]["labels"]["app.kubernetes.io/component"] == "variant"
                and k8s.job_state(j) in k8s.ACTIVE)
        self.max_active_variants = max(self.max_active_variants, n)

    def tick(self, _seconds=None):
        self.ticks += 1
        for key in [k for k, j in self.jobs.items() if j["metadata"].get("deletionTimestamp")]:
            del self.jobs[key]  # foreground deletion: the pods are gone one tick later, then the Job
        for (_, name), job in self.jobs.items():
            stuck = name in self.unschedulable or name in self.waiting or name in self.mount
            if not job["status"].get("active") or stuck or k8s.job_state(job) in k8s.TERMINAL:
                continue
            job["status"]["ready"] = 1
            if name.endswith("-driver"):
                continue  # the driver's loop is run by the test itself
            if self.ticks - job["_created"] >= self.runtime:
                job["status"] = ({"failed": 1, "conditions": [{
                    "type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                    "message": "Container aquarium for pod x failed with exit code 2 matching FailJob rule"}]}
                    if name in self.fail else {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})

    def created(self) -> list[str]:
        return [n for e, n in self.events if e == "create"]

    def expire(self):
        """The TTL controller: delete every finished Job."""
        for key in [k for k, j in self.jobs.items() if k8s.job_state(j) in k8s.TERMINAL]:
            del self.jobs[key]


def submitter(fake: FakeCluster, name="smoke.yaml", store_obj=None, lines=None, sweep=None, **kube):
    text = (ROOT / name).read_text()
    sweep = sweep or resolved(yaml.safe_load(text), **kube)
    out = lines if lines is not None else []
    return k8s.Submitter(sweep, k8s.render(sweep, text), k8s.Apis(fake, fake, fake), store=store_obj,
                         echo=out.append, now=fake.now, sleep=fake.tick), out


@pytest.fixture
def empty_store(tmp_path):
    return open_store(f"file://{tmp_path}/store")


def test_submit_orders_prepare_variants_aggregate_and_respects_max_parallel(empty_store):
    fake = FakeCluster(runtime=2)
    sub, lines = submitter(fake, store_obj=empty_store)
    result = sub.run(watch=True)
    assert result.done and result.exit_code == 0
    created = fake.created()
    assert created[0] == "smoke-prepare" and created[-1] == "smoke-aggregate"
    assert sorted(created[1:-1]) == ["smoke-cnn-a", "smoke-cnn-b", "smoke-mnv3"]
    assert sub.sweep.max_parallel == 2 and fake.max_active_variants == 2
    assert set(result.states.values()) == {"Succeeded"}
    spec_cm = sub.manifests[0]["metadata"]["name"]
    assert fake.configmaps[("aquarium", spec_cm)]["data"]["sweep.yaml"] == (ROOT / "smoke.yaml").read_text()
    assert fake.events[0] == ("configmap", spec_cm)
    assert any("smoke-aggregate" in line and "Succeeded" in line for line in lines)


def test_every_api_call_has_a_request_timeout(empty_store):
    fake = FakeCluster(runtime=1, waiting={"smoke-prepare": ("ContainerCreating", "")})
    sub, _ = submitter(fake, store_obj=empty_store)
    sub.run(max_passes=3)
    k8s.stop(sub.sweep, k8s.Apis(fake, fake, fake), sleep=fake.tick)
    names = {n for n, _ in fake.calls}
    assert {"create_namespaced_job", "list_namespaced_pod", "list_namespaced_event",
            "delete_namespaced_job"} <= names
    assert all(timeout == k8s.REQUEST_TIMEOUT for _, timeout in fake.calls)


def test_variants_wait_for_prepare():
    fake = FakeCluster(runtime=3)
    sub, _ = submitter(fake, store_obj=None)
    first = sub.run(watch=False)
    assert fake.created() == ["smoke-prepare"]
    assert first.exit_code == 3 and not first.done
    assert first.states["cnn-a"] == "NotSubmitted"


def test_max_parallel_one_runs_variants_one_at_a_time(empty_store):
    fake = FakeCluster(runtime=1)
    sub, _ = submitter(fake, store_obj=empty_store, sweep=resolved(dict(raw_of("smoke.yaml"), max_parallel=1)))
    assert sub.run().exit_code == 0
    assert fake.max_active_variants == 1


def test_submit_is_idempotent_and_skips_variants_finished_in_the_store(empty_store):
    sweep, _ = spec("smoke.yaml")
    empty_store.mark_complete(sweep.variant_prefix("cnn-a"), status.marker(sweep.variant("cnn-a")))
    empty_store.mark_complete(sweep.variant_prefix("cnn-b"), {"config_hash": "0ld0ld0ld0ld"})  # stale: rerun
    fake = FakeCluster(runtime=1)
    sub, _ = submitter(fake, store_obj=empty_store)
    result = sub.run()
    assert result.exit_code == 0 and result.states["cnn-a"] == "Skipped"
    assert "smoke-cnn-a" not in fake.created() and "smoke-cnn-b" in fake.created()
    before = list(fake.events)
    second = submitter(fake, store_obj=empty_store)[0].run()
    assert second.exit_code == 0 and second.created == []
    assert [e for e in fake.events[len(before):] if e[0] == "create"] == []


def test_store_markers_are_read_again_at_every_pass(empty_store):
    sweep, _ = spec("smoke.yaml")
    fake = FakeCluster(runtime=3)
    sub, _ = submitter(fake, store_obj=empty_store)
    sub.run(max_passes=2)  # prepare running; nothing read into a cache that stays
    empty_store.mark_complete(sweep.variant_prefix("mnv3"), status.marker(sweep.variant("mnv3")))
    result = sub.run()
    assert result.states["mnv3"] == "Skipped" and "smoke-mnv3" not in fake.created()


def test_ttl_deleted_jobs_are_never_run_again_even_by_a_new_submitter(empty_store):
    fake = FakeCluster(runtime=1, fail={"smoke-cnn-b"})
    sub, _ = submitter(fake, store_obj=empty_store)
    sub.run(max_passes=3)  # prepare succeeded; variants running
    assert ("aquarium", "smoke-prepare") in fake.jobs
    fake.tick()
    fake.expire()  # the TTL controller removes every finished Job
    again, _ = submitter(fake, store_obj=empty_store)  # a restarted submitter: nothing in memory
    result = again.run()
    assert fake.created().count("smoke-prepare") == 1 and fake.created().count("smoke-cnn-b") == 1
    assert result.states["prepare"] == "Succeeded" and result.states["cnn-b"] == "Failed"
    memory = json.loads(fake.configmaps[("aquarium", "smoke-state")]["data"]["state.json"])
    assert memory["steps"]["prepare"]["state"] == "Succeeded"


def test_existing_running_jobs_are_adopted_not_recreated(empty_store):
    fake = FakeCluster(runtime=5)
    submitter(fake, store_obj=empty_store)[0].run(watch=False)
    submitter(fake, store_obj=empty_store)[0].run(watch=False)
    assert fake.created() == ["smoke-prepare"]


def test_a_job_left_from_another_config_is_refused_before_any_write(empty_store):
    fake = FakeCluster(runtime=1)
    submitter(fake, store_obj=empty_store)[0].run()
    fake.jobs[("aquarium", "smoke-cnn-a")]["metadata"]["labels"][k8s.HASH_LABEL] = "aaaaaaaaaaaa"
    raw = raw_of("smoke.yaml")
    raw["defaults"]["epochs"] = 3  # a changed spec: a new spec ConfigMap would be written
    before = dict(fake.configmaps)
    with pytest.raises(BadInput, match="sweep stop"):
        submitter(fake, store_obj=empty_store, sweep=resolved(raw))[0].run()
    assert fake.configmaps == before


def test_a_name_taken_by_another_sweeps_job_is_refused_on_409(empty_store):
    fake = FakeCluster(runtime=1)
    sub, _ = submitter(fake, store_obj=empty_store)
    foreign = copy.deepcopy(sub.by_step["prepare"])
    foreign["metadata"]["labels"][k8s.SWEEP_LABEL] = "smoke-other"
    fake.create_namespaced_job("aquarium", foreign)  # invisible to the sweep's label selector
    with pytest.raises(BadInput, match="already exists.*not prepare of sweep smoke"):
        sub.run()


def test_failed_prepare_fails_the_sweep_without_variants(empty_store):
    fake = FakeCluster(runtime=1, fail={"smoke-prepare"})
    sub, lines = submitter(fake, store_obj=empty_store)
    result = sub.run()
    assert result.done and result.exit_code == 1
    assert fake.created() == ["smoke-prepare"]
    assert any("PodFailurePolicy" in line for line in lines)
    table = [line.split() for line in lines[-1].splitlines()]  # the schedule's reason, not "finished in the store"
    assert [row[2:] for row in table if row[0] == "cnn-a"] == [["Skipped", "prepare", "failed"]]


def test_no_variant_with_a_result_skips_aggregate(empty_store):
    fake = FakeCluster(runtime=1, fail={f"smoke-{name}" for name in spec("smoke.yaml")[0].names})
    sub, lines = submitter(fake, store_obj=empty_store)
    result = sub.run()
    assert result.done and result.exit_code == 1 and result.states["aggregate"] == "Skipped"
    assert "smoke-aggregate" not in fake.created() and "nothing to aggregate" in lines[-1]


def test_a_failed_variant_still_aggregates_the_rest_but_exits_non_zero(empty_store):
    fake = FakeCluster(runtime=1, fail={"smoke-cnn-b"})
    result = submitter(fake, store_obj=empty_store)[0].run()
    assert result.states["cnn-b"] == "Failed" and result.states["aggregate"] == "Succeeded"
    assert result.exit_code == 1


# ------------------------------------------------------------------------------------------------ why a pod does not run

def test_missing_secret_ends_submit_with_the_kubelets_message_within_two_polls(empty_store):
    msg = 'secret "aquarium-s3" not found'
    fake = FakeCluster(runtime=1, waiting={"smoke-prepare": ("CreateContainerConfigError", msg)})
    sub, _ = submitter(fake, store_obj=empty_store)
    with pytest.raises(BadInput) as err:
        sub.run(max_passes=2)
    text = str(err.value)
    assert "CreateContainerConfigError" in text and msg in text and "smoke-prepare-x7k2p" in text
    assert "create Secret aquarium-s3 in namespace aquarium" in text and "\n" not in text
    assert ("aquarium", "smoke-prepare") in fake.jobs  # left for inspection
    memory = json.loads(fake.configmaps[("aquarium", "smoke-state")]["data"]["state.json"])
    assert msg in memory["problems"][0]


@pytest.mark.parametrize("reason,message,fix", [
    ("InvalidImageName", 'Failed to apply default image tag "Aquarium:cpu": invalid reference format', "kubernetes.image"),
    ("ErrImagePull", 'failed to pull and unpack image "docker.io/library/aquarium-sweep:cpu": failed to resolve '
                     'reference: pull access denied, repository does not exist or may require authorization',
     "imagePullSecrets"),
    ("ImagePullBackOff", 'Back-off pulling image "ghcr.io/x/aq:9": manifest unknown', "kubernetes.image"),
])
def test_images_that_cannot_be_pulled_end_submit(empty_store, reason, message, fix):
    fake = FakeCluster(waiting={"smoke-prepare": (reason, message)})
    with pytest.raises(BadInput, match=reason) as err:
        submitter(fake, store_obj=empty_store)[0].run(max_passes=2)
    assert message[:40] in str(err.value) and fix in str(err.value)


def test_a_pull_that_may_pass_is_reported_every_poll_then_times_out(empty_store):
    msg = 'failed to pull image "reg:5000/aq:1": dial tcp 203.0.113.5:5000: i/o timeout'
    fake = FakeCluster(waiting={"smoke-prepare": ("ErrImagePull", msg)})
    sub, lines = submitter(fake, store_obj=empty_store, pull_timeout_seconds=300)  # 5 ticks of the fake clock
    sub.run(max_passes=4)
    reports = [line for line in lines if line.startswith("warning:") and "i/o timeout" in line]
    assert len(reports) == 3 and "gives up after 300 s" in reports[-1]  # from the pass after the create
    with pytest.raises(BadInput, match="still failing after 360 s"):
        sub.run(max_passes=5)


def test_a_long_pull_message_keeps_its_cause(empty_store):
    """containerd's message as the real test cluster's kubelet reported it: the cause is at the end, past 240 chars."""
    msg = ('failed to pull and unpack image "registry.invalid/aquarium-sweep:0.0.0": failed to resolve reference '
           '"registry.invalid/aquarium-sweep:0.0.0": failed to do request: Head "https://registry.invalid/v2/'
           'aquarium-sweep/manifests/0.0.0": dial tcp: lookup registry.invalid on 10.255.255.53:53: dial udp '
           '10.255.255.53:53: connect: network is unreachable')
    fake = FakeCluster(waiting={"smoke-prepare": ("ErrImagePull", msg)})
    sub, lines = submitter(fake, store_obj=empty_store)
    sub.run(max_passes=2)
    (line,) = [line for line in lines if line.startswith("warning:")]
    assert 'image "registry.invalid/aquarium-sweep:0.0.0"' in line and "connect: network is unreachable" in line
    assert len(line) < 420, line


def test_pods_refused_at_creation_show_the_admission_message(empty_store):
    quota = ('Error creating: pods "smoke-prepare-abcde" is forbidden: exceeded quota: gpu, requested: '
             'requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4')
    fake = FakeCluster(failed_create={"smoke-prepare": quota})
    sub, lines = submitter(fake, store_obj=empty_store)
    result = sub.run(max_passes=3)
    assert result.states["prepare"] == "Pending" and "exceeded quota: gpu" in result.problems[0].text
    assert any("exceeded quota: gpu" in line for line in lines)  # in the table
    missing_sa = ('Error creating: pods "smoke-prepare-abcde" is forbidden: error looking up service account '
                  'aquarium/aquarium-sweep: serviceaccount "aquarium-sweep" not found')
    fake = FakeCluster(failed_create={"smoke-prepare": missing_sa})
    with pytest.raises(BadInput, match='serviceaccount "aquarium-sweep" not found.*apply k8s/rbac.yaml'):
        submitter(fake, store_obj=empty_store)[0].run(max_passes=2)


def test_a_missing_configmap_mount_ends_submit(empty_store):
    msg = 'MountVolume.SetUp failed for volume "spec" : configmap "smoke-spec-0123456789" not found'
    fake = FakeCluster(mount={"smoke-prepare": msg})
    with pytest.raises(BadInput, match="FailedMount.*sweep stop"):
        submitter(fake, store_obj=empty_store)[0].run(max_passes=2)


def test_a_job_kueue_keeps_suspended_says_why(empty_store):
    fake = FakeCluster(suspended={"smoke-prepare"})
    sub, lines = submitter(fake, store_obj=empty_store, queue="gpu-queue")
    result = sub.run(max_passes=2)
    assert result.states["prepare"] == "Queued"
    assert any("queued by Kueue (queue gpu-queue)" in line and "insufficient unused quota" in line for line in lines)


def test_running_only_when_a_pod_is_ready(empty_store):
    fake = FakeCluster(runtime=5)
    sub, _ = submitter(fake, store_obj=empty_store)
    assert sub.run(watch=False).states["prepare"] == "Pending"
    assert sub.run(watch=False).states["prepare"] == "Starting"  # a pod, not ready (pulling, creating)
    fake.tick()
    assert sub.run(watch=False).states["prepare"] == "Running"


def test_pending_watchdog_reports_the_scheduler_message_once(empty_store):
    fake = FakeCluster(runtime=1, unschedulable={"smoke-cnn-a"})
    sub, lines = submitter(fake, store_obj=empty_store)
    timeout = sub.sweep.kubernetes.pending_timeout_seconds  # 600 s = 10 ticks of the fake clock
    result = sub.run(watch=True, max_passes=5)
    assert not result.warnings  # 4 minutes pending: under the timeout
    assert any("unschedulable for" in p.text for p in result.problems)  # but the reason is in the table already
    result = sub.run(watch=True, max_passes=20)
    assert len(result.warnings) == 1
    w = result.warnings[0]
    assert "smoke-cnn-a-x7k2p" in w and "Job smoke-cnn-a" in w
    assert "0/3 nodes are available: 3 Insufficient nvidia.com/gpu" in w and f"={timeout}" in w
    assert sum(line.startswith("warning: pod") and "unschedulable" in line for line in lines) == 1
    assert not result.done


def test_unschedulable_uses_the_transition_time():
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    pod = {"metadata": {"name": "p", "labels": {"job-name": "j"}}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "m",
         "lastTransitionTime": "2026-01-01T11:55:00Z"}]}}
    assert k8s.unschedulable([pod], now, 600) == []
    assert k8s.unschedulable([pod], now, 200) == [("j", "p", 300.0, "m")]
    pod["status"]["phase"] = "Running"
    assert k8s.unschedulable([pod], now, 200) == []


# ------------------------------------------------------------------------------------------------ API errors

def _api_error(status, message, reason="x"):
    err = ApiException(status=status, reason=reason)
    err.body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": status})
    return err


class Failing(FakeCluster):
    def __init__(self, error, **kw):
        super().__init__(**kw)
        self.error = error

    def list_namespaced_job(self, namespace, label_selector=None):
        raise self.error


@pytest.mark.parametrize("status,message,cls,expect", [
    (403, 'jobs.batch is forbidden: User "ann" cannot list resource "jobs" in API group "batch" in the namespace "a"',
     BadInput, "(403: jobs.batch is forbidden: User \"ann\" cannot list resource \"jobs\" in API group \"batch\" in "
               "the namespace \"a\") -- the Role lacks list on jobs: apply k8s/rbac.yaml"),
    (403, 'jobs.batch "x" is forbidden: unable to create new content in namespace a because it is being terminated',
     BadInput, "being terminated"),
    (401, "Unauthorized", BadInput, "credentials"),
    (422, 'Job.batch "x" is invalid: metadata.labels: Invalid value: "gpu queue"', BadInput, "Invalid value"),
    (400, "bad request body", BadInput, "as invalid (400)"),
    (500, "etcdserver: request timed out", TransientError, "etcdserver: request timed out"),
    (503, "service unavailable", TransientError, "retry"),
])
def test_api_errors_show_the_servers_message(status, message, cls, expect):
    sweep, _ = spec("smoke.yaml")
    fake = Failing(_api_error(status, message))
    with pytest.raises(cls) as err:
        k8s.job_states(sweep, k8s.Apis(fake, fake))
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert ("rbac.yaml" in str(err.value)) == ("cannot list resource" in message)


def test_connection_problems_are_transient():
    import urllib3

    sweep, _ = spec("smoke.yaml")
    for error in (ConnectionRefusedError("refused"), urllib3.exceptions.ReadTimeoutError(None, "/", "timed out")):
        fake = Failing(error)
        with pytest.raises(TransientError):
            k8s.job_states(sweep, k8s.Apis(fake, fake))


def test_a_missing_namespace_is_a_clear_error_not_a_loop(empty_store):
    fake = FakeCluster(namespaces=())
    sub, lines = submitter(fake, store_obj=empty_store)
    with pytest.raises(BadInput, match='namespaces "aquarium" not found: create the namespace'):
        sub.run(max_passes=3)
    assert not any("created Job" in line for line in lines)


def test_the_real_client_models_read_like_the_fake_dicts():
    from kubernetes import client

    job = client.V1Job(metadata=client.V1ObjectMeta(name="j", labels={"a": "b"}),
                       status=client.V1JobStatus(conditions=[client.V1JobCondition(type="Complete", status="True")]))
    plain = _plain(job)
    assert plain["metadata"]["labels"] == {"a": "b"} and k8s.job_state(plain) == "Succeeded"
    assert k8s.job_state(_plain(client.V1Job(status=client.V1JobStatus(active=1)))) == "Starting"
    assert k8s.job_state(_plain(client.V1Job(status=client.V1JobStatus(active=1, ready=1)))) == "Running"
    assert k8s.job_state(_plain(client.V1Job(spec=client.V1JobSpec(suspend=True, template=client.V1PodTemplateSpec()))
                                    )) == "Queued"
    json.dumps(plain)


# ------------------------------------------------------------------------------------------------ stop, detach, logs, CLI

def test_stop_deletes_in_the_foreground_waits_for_pods_and_touches_only_this_sweep(empty_store):
    fake = FakeCluster(runtime=1)
    sub, _ = submitter(fake, store_obj=empty_store)
    sub.run(watch=False)
    other = copy.deepcopy(fake.jobs[("aquarium", "smoke-prepare")])
    other["metadata"]["name"] = "other-prepare"
    for labels in (other["metadata"]["labels"], other["spec"]["template"]["metadata"]["labels"]):
        labels[k8s.SWEEP_LABEL] = labels["app.kubernetes.io/instance"] = "other"
    fake.jobs[("aquarium", "other-prepare")] = other
    elsewhere = copy.deepcopy(fake.jobs[("aquarium", "smoke-prepare")])
    elsewhere["metadata"]["namespace"] = "team-b"
    fake.jobs[("team-b", "smoke-prepare")] = elsewhere
    sweep = sub.sweep
    states = k8s.job_states(sweep, k8s.Apis(fake, fake))
    assert states == {"prepare": "Starting", "cnn-a": "NotSubmitted", "cnn-b": "NotSubmitted",
                      "mnv3": "NotSubmitted", "aggregate": "NotSubmitted"}
    ticks = fake.ticks
    deleted = k8s.stop(sweep, k8s.Apis(fake, fake), sleep=fake.tick)
    assert deleted == ["smoke-prepare"] and fake.ticks > ticks  # it waited for the pod to go
    assert set(fake.jobs) == {("aquarium", "other-prepare"), ("team-b", "smoke-prepare")}
    assert not [c for (ns, _), c in fake.configmaps.items() if ns == "aquarium"]  # spec and state removed


def test_stop_gives_up_after_its_timeout_while_pods_terminate(empty_store):
    fake = FakeCluster(runtime=1)
    sub, _ = submitter(fake, store_obj=empty_store)
    sub.run(watch=False)
    clock = iter(range(0, 1000, 10))
    with pytest.raises(TransientError, match="still terminating"):
        k8s.stop(sub.sweep, k8s.Apis(fake, fake), timeout=30, sleep=lambda s: None, clock=lambda: next(clock))


def test_detach_starts_the_driver_whose_loop_finishes_the_sweep(empty_store):
    fake = FakeCluster(runtime=1)
    sub, lines = submitter(fake, store_obj=empty_store)
    assert k8s.detach(sub) == "Running"
    driver = fake.jobs[("aquarium", "smoke-driver")]
    assert container(driver)["args"][:3] == ["sweep", "submit", "--driver"]
    assert fake.created() == ["smoke-driver"]
    # the driver pod's process: the same loop, restartable; killed after two passes, restarted, loses nothing
    first, _ = submitter(fake, store_obj=empty_store)
    first.driver = True
    first.run(max_passes=2)
    restarted, _ = submitter(fake, store_obj=empty_store)
    restarted.driver = True
    assert restarted.run().exit_code == 0
    assert sorted(fake.created()) == sorted(["smoke-driver", "smoke-prepare", "smoke-cnn-a", "smoke-cnn-b",
                                             "smoke-mnv3", "smoke-aggregate"])
    summary = "\n".join(k8s.detached_summary(sub.sweep, k8s.Apis(fake, fake)))
    assert "driver Job smoke-driver: Running" in summary and "smoke-aggregate" in summary


def test_logs_come_from_the_running_pod_then_from_the_store(empty_store):
    fake = FakeCluster(runtime=3)
    sub, _ = submitter(fake, store_obj=empty_store)
    sub.run(max_passes=5)  # prepare done at the third tick; cnn-a created at the 4th pass, ready at the 5th
    apis = k8s.Apis(fake, fake)
    assert k8s.logs(sub.sweep, apis, "cnn-a", empty_store) == "log of smoke-cnn-a-x7k2p\n"
    sub.run()
    empty_store.put_text(f"{sub.sweep.variant_prefix('cnn-a')}/job.log", "epoch 1/2 ...\n")
    assert k8s.logs(sub.sweep, apis, "cnn-a", empty_store) == "epoch 1/2 ...\n"
    with pytest.raises(BadInput, match="no log of mnv3 yet"):
        k8s.logs(sub.sweep, apis, "mnv3", empty_store)


def test_submit_and_stop_commands_drive_the_cluster(monkeypatch, tmp_path):
    fake = FakeCluster(runtime=1)
    monkeypatch.setattr(k8s, "connect", lambda: k8s.Apis(fake, fake, fake))
    monkeypatch.setattr(time, "sleep", fake.tick)
    store = f"file://{tmp_path}/store"
    res = run_cli("sweep", "submit", "--config", str(ROOT / "smoke.yaml"), "--source", SRC, "--store", store)
    assert res.exit_code == 2 and "cannot share a local folder" in res.output  # refused before touching the cluster
    assert fake.events == []
    monkeypatch.setattr(k8s.Submitter, "finished_in_store", lambda self: set())
    res = run_cli("sweep", "submit", "--config", str(ROOT / "smoke.yaml"), "--source", SRC, "--store", S3,
                  "--no-watch", "--namespace", "ml")
    assert res.exit_code == 3, res.output
    assert fake.created() == ["smoke-prepare"] and ("ml", "smoke-prepare") in fake.jobs
    res = run_cli("sweep", "submit", "--config", str(ROOT / "smoke.yaml"), "--source", SRC, "--store", S3,
                  "--namespace", "ml", "--poll-seconds", "0.1")
    assert res.exit_code == 0, res.output
    assert "smoke-aggregate" in res.output and fake.created()[-1] == "smoke-aggregate"
    res = run_cli("sweep", "stop", "--config", str(ROOT / "smoke.yaml"), "--namespace", "ml")
    assert res.exit_code == 0 and "deleted 5 Jobs in ml" in res.output
    assert fake.jobs == {}


def test_ctrl_c_leaves_the_jobs_and_says_how_to_reattach(monkeypatch):
    fake = FakeCluster(runtime=1)
    monkeypatch.setattr(k8s, "connect", lambda: k8s.Apis(fake, fake, fake))

    def interrupted(self, watch=True, max_passes=None):
        self.reconcile()
        raise KeyboardInterrupt

    monkeypatch.setattr(k8s.Submitter, "run", interrupted)
    res = run_cli("sweep", "submit", "--config", str(ROOT / "smoke.yaml"), "--source", SRC, "--store", S3)
    assert res.exit_code == 143 and "Reattach: aquarium sweep submit" in res.output
    assert ("aquarium", "smoke-prepare") in fake.jobs


def test_detach_and_logs_commands(monkeypatch, empty_store):
    fake = FakeCluster(runtime=1)
    monkeypatch.setattr(k8s, "connect", lambda: k8s.Apis(fake, fake, fake))
    monkeypatch.setattr(time, "sleep", fake.tick)
    res = run_cli("sweep", "submit", "--config", str(ROOT / "smoke.yaml"), "--source", SRC, "--store", S3,
                  "--detach")
    assert res.exit_code == 0, res.output
    assert "detached: the driver Job smoke-driver is Running" in res.output and fake.created() == ["smoke-driver"]
    res = run_cli("sweep", "logs", "driver", "--config", str(ROOT / "smoke.yaml"))
    assert res.exit_code == 0 and res.output == "log of smoke-driver-x7k2p\n"
    res = run_cli("sweep", "logs", "nope", "--config", str(ROOT / "smoke.yaml"))
    assert res.exit_code == 2 and "variant 'nope' is not in sweep" in res.output


def test_sweep_status_shows_job_state_next_to_status_json(empty_store, monkeypatch):
    fake = FakeCluster(runtime=1)
    submitter(fake, store_obj=empty_store)[0].run(watch=False)
    monkeypatch.setattr(k8s, "connect", lambda: k8s.Apis(fake, fake))
    sweep, _ = spec("smoke.yaml")
    empty_store.put_json(f"{sweep.variant_prefix('cnn-a')}/status.json", {"phase": "running", "epoch": 1,
                                                                          "epochs": 2, "val_accuracy": 0.5})
    done = run_cli("sweep", "status", "--config", str(ROOT / "smoke.yaml"), "--store", empty_store.uri,
                   "--kubernetes")
    assert done.exit_code == 0, done.output
    header, *rows = done.output.splitlines()
    assert header.split()[:3] == ["variant", "job", "phase"]
    assert rows[0].split()[:4] == ["cnn-a", "NotSubmitted", "running", "1/2"]
    assert [r.split()[0] for r in rows[:3]] == sweep.names
    assert "no driver Job" in done.output  # submitted from a terminal: its last table is shown below
