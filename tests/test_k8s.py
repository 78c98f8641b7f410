"""Kubernetes: rendered manifests against the official OpenAPI schemas (kubernetes-validate, offline), the policies
every Job must carry, `aquarium sweep plan` errors, and the submitter against an in-memory fake API.

No cluster is reachable in CI: the fake below implements the BatchV1Api/CoreV1Api methods common/k8s.py calls and
simulates Jobs running, finishing, failing and pods the scheduler cannot place."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException

from common import k8s
from common.config import load_sweep, parse_sweep
from common.errors import BadInput
from common import status
from common.executor import job_argv
from common.store import open_store

ROOT = Path(__file__).resolve().parent.parent
S3 = "s3://aquarium-test/store"
SRC = "https://example.org/aquarium.zip"


def spec(name: str) -> tuple:
    path = ROOT / name
    return load_sweep(path), path.read_text()


def rendered(name: str, **kw):
    sweep, text = spec(name)
    return sweep, text, k8s.render(sweep, text, store=kw.pop("store", S3), source=kw.pop("source", SRC), **kw)


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
    errors, _ = k8s.plan_problems(sweep, manifests, name, store=S3, source=SRC)
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
    plain = k8s.render(sweep, "x")
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
    sweep = parse_sweep(raw)
    jobs = jobs_of(k8s.render(sweep, "x", store=S3, source=SRC))
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
    sweep = parse_sweep(raw)
    for job in jobs_of(k8s.render(sweep, "x", store=S3, source=SRC)):
        spec = job["spec"]
        assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (5, 3600, 120)
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
    queued = k8s.render(parse_sweep(raw), "x", store=S3, source=SRC)
    assert all(j["metadata"]["labels"][k8s.QUEUE_LABEL] == "gpu-queue" for j in jobs_of(queued))


def test_no_literal_credentials_anywhere(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASECRETVALUE1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["endpoint"] = "http://minio.aquarium.svc:9000"
    sweep = parse_sweep(raw)
    manifests = k8s.render(sweep, (ROOT / "smoke.yaml").read_text(), store=S3, source=SRC)
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
    assert set(rights) == {("batch", "jobs"), ("", "pods"), ("", "pods/log"), ("", "events"), ("", "configmaps")}
    assert rights[("", "pods")] == {"get", "list", "watch"} and rights[("", "pods/log")] == {"get"}
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


def test_plan_refuses_a_local_dataset_and_bad_quantities():
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["defaults"]["resources"]["memory"] = "2GB"
    raw["variants"].append({"name": "aggregate"})
    sweep = parse_sweep(raw)
    manifests = k8s.render(sweep, "x", store=S3)
    errors, _ = k8s.plan_problems(sweep, manifests, "smoke.yaml", store=S3)
    text = "\n".join(errors)
    assert "dataset.source is the local file 'aquarium-tfcsv.zip'" in text
    assert "'2GB' is not a Kubernetes quantity" in text
    assert "variant name 'aggregate' clashes" in text


def test_plan_warns_about_gpu_variants_on_a_cpu_image_and_loopback_endpoints():
    raw = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    raw["kubernetes"]["image"] = "ghcr.io/x/aquarium-sweep:cpu"
    raw["endpoint"] = "http://127.0.0.1:9000"
    sweep = parse_sweep(raw)
    errors, warnings = k8s.plan_problems(sweep, k8s.render(sweep, "x", store=S3, source=SRC), "s.yaml",
                                         store=S3, source=SRC)
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
    sweep = load_sweep(ROOT / "sweep.yaml")
    sweep.kubernetes.image = "registry.example/aquarium-sweep:1.2.3"
    expect = k8s.render(sweep, (ROOT / "sweep.yaml").read_text(), "ml", S3, SRC)
    assert job == expect[2]


# ------------------------------------------------------------------------------------------------ fake API

def _match(labels: dict, selector: str | None) -> bool:
    if not selector:
        return True
    return all(labels.get(k) == v for k, v in (part.split("=", 1) for part in selector.split(",")))


class FakeCluster:
    """In-memory BatchV1Api + CoreV1Api (the methods common/k8s.py uses). `tick()` advances time: Jobs created
    at least `runtime` ticks ago finish (Failed if listed in `fail`, with exit code 2); the pods of Jobs listed
    in `unschedulable` stay Pending with the scheduler's message."""

    def __init__(self, runtime: int = 1, fail=(), unschedulable=(), start=None):
        self.jobs: dict[tuple[str, str], dict] = {}
        self.configmaps: dict[tuple[str, str], dict] = {}
        self.events: list[tuple] = []
        self.runtime, self.fail, self.unschedulable = runtime, set(fail), set(unschedulable)
        self.clock = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.ticks = 0
        self.max_active_variants = 0

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
        if (namespace, name) in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        assert body["metadata"]["namespace"] == namespace
        job = copy.deepcopy(body)
        job["status"] = {"active": 1}
        job["_created"] = self.ticks
        self.jobs[(namespace, name)] = job
        self.events.append(("create", name))
        self._count_active()

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        assert propagation_policy == "Background"
        if self.jobs.pop((namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")
        self.events.append(("delete", name))

    # -- core/v1
    def read_namespaced_config_map(self, name, namespace):
        if (namespace, name) not in self.configmaps:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.configmaps[(namespace, name)])

    def create_namespaced_config_map(self, namespace, body):
        self.configmaps[(namespace, body["metadata"]["name"])] = copy.deepcopy(body)
        self.events.append(("configmap", body["metadata"]["name"]))

    def replace_namespaced_config_map(self, name, namespace, body):
        self.configmaps[(namespace, name)] = copy.deepcopy(body)
        self.events.append(("configmap-update", name))

    def list_namespaced_pod(self, namespace, label_selector=None):
        pods = []
        for (ns, name), job in self.jobs.items():
            labels = job["spec"]["template"]["metadata"]["labels"]
            if ns != namespace or not _match(labels, label_selector) or k8s.job_state(job) != "Running":
                continue
            pod = {"metadata": {"name": f"{name}-x7k2p", "labels": {**labels, "job-name": name},
                                "creationTimestamp": self.clock.isoformat()},
                   "status": {"phase": "Running"}}
            if name in self.unschedulable:
                since = self.created_at(job)
                pod["status"] = {"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "lastTransitionTime": since.isoformat().replace("+00:00", "Z"),
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are "
                               "available: 3 No preemption victims found for incoming pod."}]}
            pods.append(pod)
        return {"items": pods}

    # -- simulation
    def created_at(self, job) -> datetime:
        return datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=job["_created"])

    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=self.ticks)

    def _count_active(self):
        n = sum(1 for j in self.jobs.values() if j["metadata"]["labels"]["app.kubernetes.io/component"] == "variant"
                and k8s.job_state(j) in ("Pending", "Running"))
        self.max_active_variants = max(self.max_active_variants, n)

    def tick(self, _seconds=None):
        self.ticks += 1
        for (_, name), job in self.jobs.items():
            if k8s.job_state(job) != "Running" or name in self.unschedulable:
                continue
            if self.ticks - job["_created"] >= self.runtime:
                if name in self.fail:
                    job["status"] = {"failed": 1, "conditions": [{
                        "type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                        "message": "Container aquarium for pod x failed with exit code 2 matching FailJob rule"}]}
                else:
                    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}

    def created(self) -> list[str]:
        return [n for e, n in self.events if e == "create"]


def submitter(fake: FakeCluster, name="smoke.yaml", store_obj=None, lines=None, **kw):
    sweep, text = spec(name)
    out = lines if lines is not None else []
    return k8s.Submitter(sweep, text, k8s.Apis(fake, fake), store=S3, source=SRC, store_obj=store_obj,
                         echo=out.append, poll_seconds=0, now=fake.now, sleep=fake.tick, **kw), out


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
    prepare_done = fake.ticks  # every variant was created after prepare finished, aggregate after all of them
    assert sub.sweep.max_parallel == 2 and fake.max_active_variants == 2
    assert set(result.states.values()) == {"Succeeded"}
    assert fake.configmaps[("aquarium", "smoke-spec")]["data"]["sweep.yaml"] == (ROOT / "smoke.yaml").read_text()
    assert fake.events[0] == ("configmap", "smoke-spec")
    assert prepare_done > 0 and any("smoke-aggregate" in line and "Succeeded" in line for line in lines)


def test_variants_wait_for_prepare():
    fake = FakeCluster(runtime=3)
    sub, _ = submitter(fake, store_obj=None)
    first = sub.run(watch=False)
    assert fake.created() == ["smoke-prepare"]
    assert first.exit_code == 3 and not first.done
    assert first.states["cnn-a"] == "NotSubmitted"


def test_max_parallel_one_runs_variants_one_at_a_time(empty_store):
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["max_parallel"] = 1
    fake = FakeCluster(runtime=1)
    sub = k8s.Submitter(parse_sweep(raw), "x", k8s.Apis(fake, fake), store=S3, source=SRC, store_obj=empty_store,
                        echo=lambda s: None, poll_seconds=0, now=fake.now, sleep=fake.tick)
    assert sub.run().exit_code == 0
    assert fake.max_active_variants == 1


def test_submit_is_idempotent_and_skips_variants_finished_in_the_store(empty_store):
    sweep, _ = spec("smoke.yaml")
    cnn_a = sweep.variant("cnn-a")
    empty_store.mark_complete(sweep.variant_prefix("cnn-a"), status.marker(cnn_a))
    empty_store.mark_complete(sweep.variant_prefix("cnn-b"), {"config_hash": "0ld0ld0ld0ld"})  # stale: rerun
    fake = FakeCluster(runtime=1)
    sub, _ = submitter(fake, store_obj=empty_store)
    result = sub.run()
    assert result.exit_code == 0 and result.states["cnn-a"] == "Skipped"
    assert "smoke-cnn-a" not in fake.created() and "smoke-cnn-b" in fake.created()
    before = list(fake.events)
    again, _ = submitter(fake, store_obj=empty_store)
    second = again.run()
    assert second.exit_code == 0 and second.created == []
    assert [e for e in fake.events[len(before):] if e[0] == "create"] == []


def test_existing_running_jobs_are_adopted_not_recreated(empty_store):
    fake = FakeCluster(runtime=5)
    first, _ = submitter(fake, store_obj=empty_store)
    first.run(watch=False)
    second, _ = submitter(fake, store_obj=empty_store)
    second.run(watch=False)
    assert fake.created() == ["smoke-prepare"]


def test_a_job_left_from_another_config_is_refused(empty_store):
    fake = FakeCluster(runtime=1)
    sub, _ = submitter(fake, store_obj=empty_store)
    sub.run()
    job = fake.jobs[("aquarium", "smoke-cnn-a")]
    job["metadata"]["labels"][k8s.HASH_LABEL] = "aaaaaaaaaaaa"
    again, _ = submitter(fake, store_obj=empty_store)
    with pytest.raises(BadInput, match="sweep stop"):
        again.run()


def test_failed_prepare_fails_the_sweep_without_variants(empty_store):
    fake = FakeCluster(runtime=1, fail={"smoke-prepare"})
    sub, lines = submitter(fake, store_obj=empty_store)
    result = sub.run()
    assert result.done and result.exit_code == 1
    assert fake.created() == ["smoke-prepare"]
    assert any("PodFailurePolicy" in line for line in lines)


def test_a_failed_variant_still_aggregates_the_rest_but_exits_non_zero(empty_store):
    fake = FakeCluster(runtime=1, fail={"smoke-cnn-b"})
    sub, _ = submitter(fake, store_obj=empty_store)
    result = sub.run()
    assert result.states["cnn-b"] == "Failed" and result.states["aggregate"] == "Succeeded"
    assert result.exit_code == 1


def test_pending_watchdog_reports_the_scheduler_message_once(empty_store):
    fake = FakeCluster(runtime=1, unschedulable={"smoke-cnn-a"})
    sub, lines = submitter(fake, store_obj=empty_store)
    timeout = sub.sweep.kubernetes.pending_timeout_seconds  # 600 s = 10 ticks of the fake clock
    result = sub.run(watch=True, max_passes=5)
    assert not result.warnings  # 4 minutes pending: under the timeout
    result = sub.run(watch=True, max_passes=20)
    assert len(result.warnings) == 1
    w = result.warnings[0]
    assert "smoke-cnn-a-x7k2p" in w and "Job smoke-cnn-a" in w
    assert "0/3 nodes are available: 3 Insufficient nvidia.com/gpu" in w and f"={timeout}" in w
    assert sum("unschedulable" in line for line in lines) == 1
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


def test_job_states_and_stop_touch_only_this_sweep(empty_store):
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
    sweep, _ = spec("smoke.yaml")
    states = k8s.job_states(sweep, k8s.Apis(fake, fake))
    assert states == {"prepare": "Running", "cnn-a": "NotSubmitted", "cnn-b": "NotSubmitted",
                      "mnv3": "NotSubmitted", "aggregate": "NotSubmitted"}
    fake.tick()
    assert k8s.job_states(sweep, k8s.Apis(fake, fake))["prepare"] == "Succeeded"
    deleted = k8s.stop(sweep, k8s.Apis(fake, fake))
    assert deleted == ["smoke-prepare"]
    assert set(fake.jobs) == {("aquarium", "other-prepare"), ("team-b", "smoke-prepare")}


def test_api_errors_become_one_line_errors():
    class Forbidden(FakeCluster):
        def list_namespaced_job(self, namespace, label_selector=None):
            raise ApiException(status=403, reason="Forbidden")

    sweep, _ = spec("smoke.yaml")
    with pytest.raises(BadInput, match="rbac.yaml"):
        k8s.job_states(sweep, k8s.Apis(Forbidden(), Forbidden()))


def test_the_real_client_models_read_like_the_fake_dicts():
    from kubernetes import client

    job = client.V1Job(metadata=client.V1ObjectMeta(name="j", labels={"a": "b"}),
                       status=client.V1JobStatus(conditions=[client.V1JobCondition(type="Complete", status="True")]))
    plain = k8s._plain(job)
    assert plain["metadata"]["labels"] == {"a": "b"} and k8s.job_state(plain) == "Succeeded"
    assert k8s.job_state(k8s._plain(client.V1Job(status=client.V1JobStatus(active=1)))) == "Running"
    json.dumps(plain)


def test_submit_and_stop_commands_drive_the_cluster(monkeypatch, tmp_path):
    fake = FakeCluster(runtime=1)
    monkeypatch.setattr(k8s, "connect", lambda: k8s.Apis(fake, fake))
    monkeypatch.setattr(k8s.time, "sleep", fake.tick)
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


def test_sweep_status_shows_job_state_next_to_status_json(empty_store, monkeypatch):
    from click.testing import CliRunner

    from jobs.cli import main

    fake = FakeCluster(runtime=1)
    submitter(fake, store_obj=empty_store)[0].run(watch=False)
    monkeypatch.setattr(k8s, "connect", lambda: k8s.Apis(fake, fake))
    sweep, _ = spec("smoke.yaml")
    empty_store.put_json(f"{sweep.variant_prefix('cnn-a')}/status.json", {"phase": "running", "epoch": 1,
                                                                          "epochs": 2, "val_accuracy": 0.5})
    done = CliRunner().invoke(main, ["sweep", "status", "--config", str(ROOT / "smoke.yaml"),
                                     "--store", empty_store.uri, "--kubernetes"])
    assert done.exit_code == 0, done.output
    header, *rows = done.output.splitlines()
    assert header.split()[:3] == ["variant", "job", "phase"]
    assert rows[0].split()[:4] == ["cnn-a", "NotSubmitted", "running", "1/2"]
    assert [r.split()[0] for r in rows] == sweep.names
