"""The sweep on a real Kubernetes v1.37.2 cluster: kube-apiserver (RBAC, default admission plugins), controller
manager (the Job controller applies podFailurePolicy), scheduler, containerd and a kubelet running the project's CPU
image -- brought up by tests/cluster/up.sh inside the network namespace `aqk8s` and torn down after the session.

Each test submits with `aquarium sweep submit` as a user does: a subprocess with a KUBECONFIG holding the token of a
ServiceAccount bound to the `aquarium-sweep-submitter` Role of k8s/rbac.yaml, a moto S3 server bound to 198.18.0.1
inside the namespace (the pods and this process reach it there), and the assertions read what a user sees: the exit
code, the lines printed, the store, the Jobs and pods.

Needs root, Go, containerd and Docker (`.ci/cluster-setup.sh`, `.ci/docker-setup.sh`). Under CI=true a missing
prerequisite fails the tests; elsewhere they skip with the reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import make_dataset

ROOT = Path(__file__).resolve().parent.parent
UP, DOWN = ROOT / "tests/cluster/up.sh", ROOT / "tests/cluster/down.sh"
NODE, NODE_IP, S3_PORT = "aqk8s-node", "198.18.0.1", 9000
ENDPOINT = f"http://{NODE_IP}:{S3_PORT}"
S3_ENV = {"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}
AQUARIUM = str(Path(sys.executable).parent / "aquarium")
STAGED: dict[str, str] = {}  # AQUARIUM_WEIGHTS=s3://<bucket>/weights/ once `bucket` has staged the ImageNet file
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(3600)]  # the first test pays for up.sh


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"cluster tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"no test cluster: {reason}")


# ---------------------------------------------------------------------------------------------- the cluster

class Cluster:
    """The admin's API clients (system:masters) and the paths up.sh printed."""

    def __init__(self, kubeconfig: str):
        from kubernetes import client, config

        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core, self.batch = client.CoreV1Api(self.api), client.BatchV1Api(self.api)
        self.rbac = client.RbacAuthorizationV1Api(self.api)
        self.ca = yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]["certificate-authority"]
        self.server = f"https://{NODE_IP}:6443"

    def set_gpus(self, count: int | None) -> None:
        """Node status capacity of nvidia.com/gpu (None removes it); the kubelet derives allocatable from it."""
        if count is None:
            ops = [{"op": "remove", "path": f"/status/{k}/nvidia.com~1gpu"} for k in ("capacity", "allocatable")]
        else:
            ops = [{"op": "add", "path": f"/status/{k}/nvidia.com~1gpu", "value": str(count)}
                   for k in ("capacity", "allocatable")]
        self.core.patch_node_status(NODE, ops)

    def pods(self, ns: str, selector: str = "app.kubernetes.io/name=aquarium-sweep") -> list:
        return self.core.list_namespaced_pod(ns, label_selector=selector).items


@pytest.fixture(scope="module")
def cluster():
    """up.sh once (binaries from the cache or built, image built and imported); down.sh after this module, so the
    rest of `make test` does not share the CPUs with an idle control plane. AQK8S_REUSE=1 uses a cluster that
    `make cluster-up` started and leaves it running."""
    if os.geteuid() != 0:
        _unavailable("needs root (network namespace, containerd, kubelet)")
    for tool in ("go", "containerd", "runc", "docker", "nsenter", "openssl"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/local/go/bin:/usr/sbin"):
            _unavailable(f"{tool} not found: run .ci/cluster-setup.sh and .ci/docker-setup.sh")
    reuse = Path("/run/aqk8s/admin.kubeconfig")
    if os.environ.get("AQK8S_REUSE") and reuse.is_file():  # a cluster from `make cluster-up`: use it, leave it up
        yield Cluster(str(reuse))
        return
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/local/go/bin", "AQK8S_S3_SERVER": moto}
    t0 = time.monotonic()
    res = subprocess.run(["bash", str(UP)], capture_output=True, text=True, timeout=3600, env=env)
    took = time.monotonic() - t0
    if res.returncode != 0:
        subprocess.run(["bash", str(DOWN)], capture_output=True, timeout=300)
        pytest.fail(f"tests/cluster/up.sh failed after {took:.0f} s:\n{(res.stdout + res.stderr)[-3000:]}",
                    pytrace=False)
    print(f"\n{res.stderr.strip().splitlines()[-1]}", file=sys.stderr)
    kubeconfig = res.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        yield Cluster(kubeconfig)
    finally:
        down = subprocess.run(["bash", str(DOWN)], capture_output=True, text=True, timeout=600)
        assert down.returncode == 0, f"tests/cluster/down.sh failed: {down.stderr[-2000:]}"


@pytest.fixture(scope="module")
def cluster_s3(cluster):
    """The real moto S3 server up.sh started on 198.18.0.1 inside the cluster's namespace (pods and this process
    reach it there); down.sh ends it."""
    return ENDPOINT


@pytest.fixture(scope="module")
def bucket(cluster_s3, tmp_path_factory):
    """One bucket for the session, with the generated dataset uploaded as the sweeps' s3:// source."""
    import boto3

    name = "k8s-" + uuid.uuid4().hex[:10]
    s3 = boto3.client("s3", endpoint_url=cluster_s3, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=name)
    zip_path = make_dataset(tmp_path_factory.mktemp("k8sdata") / "aquarium-small.zip")
    s3.upload_file(str(zip_path), name, "datasets/aquarium-small.zip")
    # the ImageNet file staged once in the cluster's S3, as an air-gapped cluster does; pods read it from there
    from common.models import IMAGENET_FILES

    shared = Path(os.environ.get("AQUARIUM_WEIGHTS", "")) / IMAGENET_FILES["small"][1]
    assert shared.is_file(), f"smoke.yaml's mnv3 needs {shared.name}: set AQUARIUM_WEIGHTS to ../shared/weights"
    s3.upload_file(str(shared), name, f"weights/{shared.name}")
    STAGED["AQUARIUM_WEIGHTS"] = f"s3://{name}/weights/"
    return name


class Namespace:
    """A fresh namespace with what an admin sets up once (k8s/rbac.yaml, the S3 Secret) and the submitter's
    kubeconfig: a TokenRequest token of the ServiceAccount bound to the aquarium-sweep-submitter Role."""

    def __init__(self, cluster: Cluster, tmp: Path, rbac: bool = True, secret: bool = True):
        from common.k8s import render_rbac

        self.cluster, self.name = cluster, "t-" + uuid.uuid4().hex[:8]
        cluster.core.create_namespace({"metadata": {"name": self.name}})
        if rbac:
            for doc in render_rbac(self.name):
                create = {"ServiceAccount": cluster.core.create_namespaced_service_account,
                          "Role": cluster.rbac.create_namespaced_role,
                          "RoleBinding": cluster.rbac.create_namespaced_role_binding}[doc["kind"]]
                create(self.name, doc)
        if secret:
            cluster.core.create_namespaced_secret(self.name, {
                "metadata": {"name": "aquarium-s3"},
                "stringData": {k: S3_ENV[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})
        self.kubeconfig = cluster.kubeconfig  # the admin's, until a submitter token exists
        if rbac:
            token = cluster.core.create_namespaced_service_account_token(
                "aquarium-sweep-submitter", self.name, {"spec": {"expirationSeconds": 3600}}).status.token
            self.kubeconfig = str(tmp / f"{self.name}.kubeconfig")
            Path(self.kubeconfig).write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "submitter",
                "clusters": [{"name": "aqk8s", "cluster": {"server": cluster.server,
                                                            "certificate-authority": cluster.ca}}],
                "users": [{"name": "submitter", "user": {"token": token}}],
                "contexts": [{"name": "submitter", "context": {"cluster": "aqk8s", "user": "submitter",
                                                               "namespace": self.name}}]}))

    def delete(self) -> None:
        """Delete the namespace and wait (up to 2 min) until its pods are gone, so the next test has the CPUs."""
        self.cluster.core.delete_namespace(self.name)
        for pod in self.cluster.core.list_namespaced_pod(self.name).items:  # no grace period: the next test's CPUs
            self.cluster.core.delete_namespaced_pod(pod.metadata.name, self.name, grace_period_seconds=0)
        for _ in range(120):
            if not self.cluster.core.list_namespaced_pod(self.name).items:
                return
            time.sleep(1)


@pytest.fixture
def namespace(cluster, tmp_path):
    made = []

    def make(**kwargs) -> Namespace:
        made.append(Namespace(cluster, tmp_path, **kwargs))
        return made[-1]

    yield make
    for ns in made:
        ns.delete()


def spec(tmp: Path, name: str, variants: list[dict] | None = None, **kubernetes) -> Path:
    """smoke.yaml under another sweep name, optionally with other variants and kubernetes settings."""
    doc = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    doc["name"] = name
    if variants is not None:
        doc["variants"] = variants
    doc["kubernetes"].update(kubernetes)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Run:
    """A finished (or timed-out) `aquarium sweep ...` subprocess."""

    def __init__(self, code: int | None, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]

    def __repr__(self):
        return f"exit {self.code}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-3000:]}"


def aquarium(args: list[str], kubeconfig: str, timeout: float = 900) -> Run:
    """Run the CLI as a user would, with KUBECONFIG and the S3 settings in the environment; a run still going
    after `timeout` seconds is ended and reported with code None."""
    env = {**os.environ, **S3_ENV, **STAGED, "KUBECONFIG": kubeconfig}
    proc = subprocess.Popen([AQUARIUM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
        return Run(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        return Run(None, out, err)


def submit(config: Path, ns: Namespace, bucket: str, *extra: str, timeout: float = 900, poll: float = 2,
           prefix: str = "store") -> Run:
    return aquarium(["sweep", "submit", "--config", str(config), "--namespace", ns.name,
                     "--store", f"s3://{bucket}/{prefix}", "--source", f"s3://{bucket}/datasets/aquarium-small.zip",
                     "--endpoint", ENDPOINT, "--poll-seconds", str(poll), *extra], ns.kubeconfig, timeout)


def store(bucket: str, prefix: str = "store"):
    """The test S3 server's store; its credentials are read when the client is made, so the environment is
    patched only for that moment (a lasting AWS_ENDPOINT_URL would leak into every later test of the session)."""
    from unittest import mock

    from common.store import open_store

    with mock.patch.dict(os.environ, S3_ENV):
        return open_store(f"s3://{bucket}/{prefix}", ENDPOINT)


def sweep_of(config: Path):
    from common.config import load_sweep

    return load_sweep(config)


# ---------------------------------------------------------------------------------------------- tests

def test_a_pod_runs_the_image_under_containerd(cluster):
    """Always runs: one pod of the imported CPU image (`aquarium --help`) through the kubelet and containerd."""
    name = "help-" + uuid.uuid4().hex[:6]
    cluster.core.create_namespaced_pod("default", {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "aquarium", "image": "aquarium-sweep:cpu", "imagePullPolicy": "Never", "args": ["--help"],
            "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}})
    try:
        for _ in range(180):
            pod = cluster.core.read_namespaced_pod(name, "default")
            if pod.status.phase in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        state = pod.status.container_statuses[0].state
        assert pod.status.phase == "Succeeded", pod.status
        assert state.terminated.exit_code == 0
        log = cluster.core.read_namespaced_pod_log(name, "default")
        assert "train-variant" in log and "prepare" in log, log
        assert pod.status.pod_ip.startswith("198.18.1."), pod.status.pod_ip
    finally:
        cluster.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


@pytest.fixture(scope="module")
def smoke(cluster, bucket, tmp_path_factory):
    """smoke.yaml submitted once by the submitter Role; the tests below read its outcome."""
    tmp = tmp_path_factory.mktemp("smoke")
    ns = Namespace(cluster, tmp)
    t0 = time.monotonic()
    run = submit(ROOT / "smoke.yaml", ns, bucket, timeout=1500)
    print(f"\nsmoke sweep in pods: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    yield ns, run
    ns.delete()


def test_smoke_sweep_in_real_pods_with_the_submitter_role_only(smoke, bucket, cluster):
    """The whole sweep, submitted with the Role of k8s/rbac.yaml (nothing more), ends with the report in the store."""
    ns, run = smoke
    assert run.code == 0, run
    sweep = sweep_of(ROOT / "smoke.yaml")
    st = store(bucket)
    for v in sweep.variants:
        done = st.is_complete(sweep.variant_prefix(v.name))
        assert done and done["config_hash"] == v.config_hash, v.name
    # the fine-tune in its pod started from the ImageNet file staged in S3, not from random weights
    assert "weights ImageNet (mobilenet_v3_small_imagenet_no_top.weights.h5)" in st.get_text(
        f"{sweep.variant_prefix('mnv3')}/job.log")
    report = st.get_json(f"sweeps/{sweep.name}/report/report.json")
    assert {row["variant"] for row in report["leaderboard"]} == set(sweep.names), report
    assert st.exists(f"sweeps/{sweep.name}/report/report.html") and st.exists(f"sweeps/{sweep.name}/best/model.keras")
    jobs = cluster.batch.list_namespaced_job(ns.name).items
    assert len(jobs) == 2 + len(sweep.variants)
    assert all(j.status.succeeded == 1 for j in jobs), [(j.metadata.name, j.status) for j in jobs]


def test_resubmitting_a_finished_sweep_creates_nothing(smoke, bucket, cluster):
    ns, first = smoke
    assert first.code == 0, first
    before = {j.metadata.uid for j in cluster.batch.list_namespaced_job(ns.name).items}
    again = submit(ROOT / "smoke.yaml", ns, bucket, timeout=300)
    assert again.code == 0, again
    assert "created Job" not in again.out, again
    assert {j.metadata.uid for j in cluster.batch.list_namespaced_job(ns.name).items} == before


def test_submit_without_the_rolebinding_is_refused_with_one_line(cluster, namespace, bucket):
    ns = namespace()
    cluster.rbac.delete_namespaced_role_binding("aquarium-sweep-submitter", ns.name)
    time.sleep(2)  # the authorizer's cache follows the binding within a moment
    run = submit(ROOT / "smoke.yaml", ns, bucket, "--no-watch", timeout=120)
    assert run.code == 2, run
    assert len(run.errors()) == 1 and "refused" in run.errors()[0] and "403" in run.errors()[0], run
    assert "aquarium-sweep-submitter" in run.errors()[0], run
    assert not cluster.batch.list_namespaced_job(ns.name).items and not cluster.pods(ns.name)


def test_a_variant_exiting_2_fails_its_job_at_once_and_aggregate_reports_it(cluster, namespace, bucket, tmp_path):
    """exit 2 (bad input: a weights file that is not in the store) -> FailJob via podFailurePolicy: one pod, no
    retries; the other variant finishes and the aggregate's report names the failed one."""
    config = spec(tmp_path, "exit2", [
        {"name": "cnn-a", "conv_layers": 3, "filters": [8, 16, 16], "kernel_size": 3, "dense_units": 16},
        {"name": "bad", "kind": "finetune", "image_size": 64, "weights": f"s3://{bucket}/missing/none.weights.h5",
         "epochs": 1, "steps_per_epoch": 2}])
    ns = namespace()
    run = submit(config, ns, bucket, timeout=1200)
    assert run.code == 1, run  # a step failed
    bad = cluster.batch.read_namespaced_job("exit2-bad", ns.name)
    conds = {c.type: c for c in bad.status.conditions or []}
    assert conds["Failed"].reason == "PodFailurePolicy", conds
    assert len(cluster.pods(ns.name, "batch.kubernetes.io/job-name=exit2-bad")) == 1  # not retried
    assert "exit2-bad" in run.out and "PodFailurePolicy" in run.out, run
    report = store(bucket).get_json("sweeps/exit2/report/report.json")
    rows = {row["variant"]: row for row in report["leaderboard"]}
    assert set(rows) == {"cnn-a", "bad"}, report
    assert "weights file" in json.dumps(rows["bad"]), rows["bad"]


def test_an_evicted_gpu_variant_is_replaced_without_a_failure_and_resumes(cluster, namespace, bucket, tmp_path):
    """The node's nvidia.com/gpu capacity lets the scheduler place a GPU variant (it trains on the CPU image);
    pods/eviction mid-training: DisruptionTarget -> Ignore, a new pod resumes from the checkpoint."""
    config = spec(tmp_path, "evict", [{"name": "gpu-cnn", "conv_layers": 3, "filters": [8, 16, 16],
                                       "kernel_size": 3, "dense_units": 16, "epochs": 12,
                                       "early_stopping_patience": 12, "resources": {"gpu": 1, "cpu": "1",
                                                                                    "memory": "2Gi"}}])
    ns = namespace()
    sweep = sweep_of(config)
    st = store(bucket)
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(run=submit(config, ns, bucket, timeout=1200)))
    t.start()
    committed = f"{sweep.variant_prefix('gpu-cnn')}/checkpoint/state.json"  # the checkpoint's commit point
    job_pods = "batch.kubernetes.io/job-name=evict-gpu-cnn"
    evicted = None
    for _ in range(1200):  # wait for a committed checkpoint, then evict the running pod
        running = [p for p in cluster.pods(ns.name, job_pods) if p.status.phase == "Running"]
        if running and st.exists(committed):
            evicted = running[0]
            cluster.core.create_namespaced_pod_eviction(evicted.metadata.name, ns.name, {
                "apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": evicted.metadata.name, "namespace": ns.name}})
            break
        assert t.is_alive(), result
        time.sleep(0.5)
    assert evicted, "the variant never had a committed checkpoint in a running pod"
    assert evicted.spec.containers[0].resources.limits.get("nvidia.com/gpu") == "1"  # placed on the GPU node
    conditions, exit_code = set(), None
    while True:  # follow the evicted pod until the API forgets it: its conditions and exit code
        try:
            pod = cluster.core.read_namespaced_pod(evicted.metadata.name, ns.name)
        except Exception as e:
            assert getattr(e, "status", None) == 404, e
            break
        conditions |= {c.type for c in pod.status.conditions or [] if c.status == "True"}
        for cs in pod.status.container_statuses or []:
            if cs.state.terminated:
                exit_code = cs.state.terminated.exit_code
        time.sleep(0.5)
    t.join()
    run = result["run"]
    assert run.code == 0, run
    assert "DisruptionTarget" in conditions and exit_code == 143, (conditions, exit_code)
    job = cluster.batch.read_namespaced_job("evict-gpu-cnn", ns.name)
    assert job.status.succeeded == 1 and not job.status.failed, job.status
    pods = cluster.pods(ns.name, job_pods)
    assert [p.status.phase for p in pods] == ["Succeeded"] and pods[0].metadata.name != evicted.metadata.name
    assert pods[0].spec.containers[0].resources.limits.get("nvidia.com/gpu") == "1"
    assert "resuming after epoch" in st.get_text(f"{sweep.variant_prefix('gpu-cnn')}/job.log")
    assert st.is_complete(sweep.variant_prefix("gpu-cnn"))


def test_a_gpu_variant_without_gpu_capacity_gets_the_schedulers_message(cluster, namespace, bucket, tmp_path):
    config = spec(tmp_path, "nogpu", [{"name": "gpu-cnn", "conv_layers": 3, "filters": [8, 16, 16],
                                       "resources": {"gpu": 1, "cpu": "1", "memory": "2Gi"}}],
                  pending_timeout_seconds=10)
    ns = namespace()
    cluster.set_gpus(None)
    try:
        env = {**os.environ, **S3_ENV, "KUBECONFIG": ns.kubeconfig}
        proc = subprocess.Popen([AQUARIUM, "sweep", "submit", "--config", str(config), "--namespace", ns.name,
                                 "--store", f"s3://{bucket}/store", "--source",
                                 f"s3://{bucket}/datasets/aquarium-small.zip", "--endpoint", ENDPOINT,
                                 "--poll-seconds", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env)
        timer = threading.Timer(600, proc.terminate)
        timer.start()
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if "unschedulable" in line:
                break
        proc.terminate()
        proc.wait(30)
        timer.cancel()
    finally:
        cluster.set_gpus(1)
    warning = [line for line in lines if "unschedulable" in line]
    assert warning, "\n".join(lines)
    assert "nogpu-gpu-cnn" in warning[0] and "0/1 nodes are available" in warning[0], warning[0]
    assert "Insufficient nvidia.com/gpu" in warning[0], warning[0]


# ---------------------------------------------------------------------------------------------- issue 10

def _one_line_naming(run: Run, *words: str) -> bool:
    print(f"\nexit {run.code}:", *run.errors(), sep="\n", file=sys.stderr)  # the line a user sees, in the log
    return run.code == 2 and len(run.errors()) == 1 and all(w in run.errors()[0] for w in words)


def test_a_missing_namespace_ends_submit_with_one_line(cluster, bucket):
    missing = "missing-" + uuid.uuid4().hex[:6]
    run = aquarium(["sweep", "submit", "--config", str(ROOT / "smoke.yaml"), "--namespace", missing,
                    "--store", f"s3://{bucket}/store", "--source", f"s3://{bucket}/datasets/aquarium-small.zip",
                    "--endpoint", ENDPOINT, "--poll-seconds", "2"], cluster.kubeconfig, timeout=45)
    assert _one_line_naming(run, missing), run


def _first_waiting(cluster: Cluster, ns: str, reason: str, alive: threading.Thread) -> float | None:
    """When (monotonic) a container of the namespace's pods first waits with `reason`; None if `alive` ends first."""
    while alive.is_alive():
        for pod in cluster.pods(ns):
            if any(cs.state.waiting and cs.state.waiting.reason == reason
                   for cs in pod.status.container_statuses or []):
                return time.monotonic()
        time.sleep(0.2)
    return None


def test_a_missing_secret_ends_submit_with_the_kubelets_message_within_two_polls(cluster, namespace, bucket,
                                                                                 tmp_path):
    """Issue 10's done-when: the kubelet's CreateContainerConfigError for the missing S3 Secret ends submit with
    exit 2 and one line quoting it, at most two polls after the kubelet reported it."""
    ns, poll, result = namespace(secret=False), 5, {}

    def run():
        result["run"] = submit(spec(tmp_path, "nosecret"), ns, bucket, timeout=120, poll=poll)
        result["ended"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    seen = _first_waiting(cluster, ns.name, "CreateContainerConfigError", t)
    t.join()
    run = result["run"]
    assert _one_line_naming(run, "CreateContainerConfigError", 'secret "aquarium-s3" not found'), run
    assert seen is not None, f"submit ended before the kubelet reported the missing Secret: {run}"
    assert result["ended"] - seen <= 2 * poll, f"{result['ended'] - seen:.1f} s after the kubelet's report: {run}"


def test_an_unpullable_image_ends_submit_with_one_line(cluster, namespace, bucket, tmp_path):
    ns = namespace()
    image = "registry.invalid/aquarium-sweep:0.0.0"
    run = submit(spec(tmp_path, "noimage"), ns, bucket, "--image", image, "--pull-timeout", "30", timeout=120)
    assert _one_line_naming(run, image), run


def test_a_missing_service_account_ends_submit_with_one_line(cluster, namespace, bucket, tmp_path):
    ns = namespace(rbac=False)  # the admin submits; the pods' ServiceAccount aquarium-sweep was never created
    run = submit(spec(tmp_path, "nosa", pending_timeout_seconds=10), ns, bucket, timeout=75)
    assert _one_line_naming(run, "aquarium-sweep", "ServiceAccount"), run


def test_stop_then_resubmit_never_runs_two_pods_of_a_variant(cluster, namespace, bucket, tmp_path):
    """Stopped as soon as the variant's container starts: a pod may then outlive its Job for its whole grace period
    (SIGTERM reaches the container's PID 1 before the variant handles it), while the resubmit's pods start."""
    config = spec(tmp_path, "restart", [{"name": "long", "conv_layers": 3, "filters": [8, 16, 16], "epochs": 300,
                                         "steps_per_epoch": None, "early_stopping_patience": 300}],
                  job_resources={"gpu": 0, "cpu": "500m", "memory": "2Gi"})  # prepare fits beside the old pod
    ns = namespace()
    selector = "aquarium-sweep/variant=long"
    alive_max, stop_watching = [0], threading.Event()

    def started() -> bool:
        return any(cs.state.running for p in cluster.pods(ns.name, selector)
                   for cs in p.status.container_statuses or [])

    for _ in range(300):  # --no-watch passes until the variant Job exists, then watch for its container to start
        run = submit(config, ns, bucket, "--no-watch", timeout=120)
        assert run.code in (0, 3), run
        if "created Job restart-long" in run.out:
            break
        time.sleep(1)
    for _ in range(3000):
        if started():
            break
        time.sleep(0.1)

    def watch():
        while not stop_watching.is_set():
            pods = cluster.pods(ns.name, selector)
            alive = [p for p in pods if p.status.phase in ("Pending", "Running")]
            alive_max[0] = max(alive_max[0], len(alive))
            seen = sorted((p.metadata.name[-5:], p.status.phase, p.metadata.deletion_timestamp is not None)
                          for p in pods)
            if tuple(seen) != timeline[-1][1:]:
                timeline.append((round(time.monotonic() - t0, 1), *seen))
            time.sleep(0.2)

    t0, timeline = time.monotonic(), [(0.0,)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        stopped = aquarium(["sweep", "stop", "--config", str(config), "--namespace", ns.name], ns.kubeconfig, 120)
        assert stopped.code == 0, stopped
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # resubmit at once, and again, as a user would
            run = submit(config, ns, bucket, "--no-watch", timeout=120)
            assert run.code in (0, 2, 3), run
            if any(p.metadata.deletion_timestamp is None for p in cluster.pods(ns.name, selector)):
                time.sleep(5)
                break
            time.sleep(1)
    finally:
        stop_watching.set()
        watcher.join()
    print("pods of variant long (s, (pod, phase, deleting)...):", *timeline, sep="\n", file=sys.stderr)
    assert alive_max[0] <= 1, f"{alive_max[0]} pods of variant 'long' alive at once"


# ---------------------------------------------------------------------------------------------- walk away

def _ours_outside_the_cluster(namespace: str) -> list[str]:
    """Command lines of processes on this machine naming the namespace that are not in a pod (kubepods cgroup)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            in_pod = "kubepods" in (proc / "cgroup").read_text()
        except OSError:
            continue
        if namespace in cmd and not in_pod:
            found.append(cmd)
    return found


def test_a_detached_sweep_completes_with_nothing_of_ours_outside_the_cluster(cluster, namespace, bucket, tmp_path):
    """Issue 10's done-when: `submit --detach` returns once the driver pod runs; the driver (the submitter Role's
    ServiceAccount, the API through the `kubernetes` Service and kube-proxy) then runs the whole sweep, on a store
    of its own, while no process naming the namespace runs on this machine outside the cluster's pods."""
    config, ns = spec(tmp_path, "detached"), namespace()
    run = submit(config, ns, bucket, "--detach", timeout=300, prefix="detached")
    assert run.code == 0 and "detached: the driver Job detached-driver is" in run.out, run
    driver_pods = cluster.pods(ns.name, "batch.kubernetes.io/job-name=detached-driver")
    assert driver_pods and driver_pods[0].spec.service_account_name == "aquarium-sweep-submitter"
    outside = _ours_outside_the_cluster(ns.name)
    assert not outside, outside
    for _ in range(1500):
        driver = cluster.batch.read_namespaced_job("detached-driver", ns.name)
        if driver.status.succeeded or driver.status.failed:
            break
        assert not _ours_outside_the_cluster(ns.name)
        time.sleep(1)
    log = cluster.core.read_namespaced_pod_log(driver_pods[0].metadata.name, ns.name)
    assert driver.status.succeeded == 1, f"{driver.status}\n{log[-3000:]}"
    sweep = sweep_of(config)
    jobs = {j.metadata.name: j for j in cluster.batch.list_namespaced_job(ns.name).items}
    assert set(jobs) == {"detached-driver", "detached-prepare", "detached-aggregate",
                         *(f"detached-{v}" for v in sweep.names)}, sorted(jobs)
    assert all(j.status.succeeded == 1 for j in jobs.values()), [(n, j.status) for n, j in jobs.items()]
    report = store(bucket, "detached").get_json("sweeps/detached/report/report.json")
    assert {row["variant"] for row in report["leaderboard"]} == set(sweep.names), report


# ---------------------------------------------------------------------------------------------- issue 20: other classes

def test_a_dataset_of_three_other_classes_runs_in_pods_and_predict_names_them(cluster, namespace, bucket, tmp_path):
    """Issue 20's done-when in real pods: a COCO export of hard hats, vests and gloves (test_formats' photos),
    smoke.yaml without its aquarium classes and with its two CNNs only (little CPU). The prepare pod takes the
    classes from the data; the report's tables and `predict` name those three classes and no aquarium animal."""
    import boto3
    from test_formats import coco, three_class_splits, write

    splits = three_class_splits(counts=(24, 12, 12))
    zip_path = write(tmp_path / "ppe.zip", coco(splits))
    boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").upload_file(str(zip_path), bucket, "datasets/ppe.zip")
    doc = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    del doc["dataset"]["classes"]
    doc.update(name="ppe", variants=[v for v in doc["variants"] if v.get("kind", "cnn") == "cnn"])
    config = tmp_path / "ppe.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    ns = namespace()
    run = aquarium(["sweep", "submit", "--config", str(config), "--namespace", ns.name, "--store",
                    f"s3://{bucket}/ppe", "--source", f"s3://{bucket}/datasets/ppe.zip", "--endpoint", ENDPOINT,
                    "--poll-seconds", "2"], ns.kubeconfig, timeout=1200)
    assert run.code == 0, run
    jobs = cluster.batch.list_namespaced_job(ns.name).items
    assert sorted(j.metadata.name for j in jobs) == ["ppe-aggregate", "ppe-cnn-a", "ppe-cnn-b", "ppe-prepare"]
    assert all(j.status.succeeded == 1 for j in jobs), [(j.metadata.name, j.status) for j in jobs]

    classes, aquarium_names = ["glove", "hardhat", "vest"], ("fish", "penguin", "puffin", "shark", "stingray")
    st = store(bucket, "ppe")
    assert st.get_json("data/classes.json") == classes
    for name in ("cnn-a", "cnn-b"):
        metrics = st.get_json(f"sweeps/ppe/variants/{name}/metrics.json")
        assert metrics["classes"] == classes and len(metrics["test"]["confusion"]) == 3, name
    report_md = st.get_text("sweeps/ppe/report/report.md")
    assert all(f"| {c} |" in report_md for c in classes), report_md  # the best model's per-class table
    assert not any(a in report_md for a in aquarium_names), report_md
    assert st.get_json("sweeps/ppe/best/model_card.json")["classes"] == classes

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(splits["test"][0]["test-000.jpg"])
    pred = aquarium(["predict", "--model", "best", "--config", str(config), "--store", f"s3://{bucket}/ppe",
                     str(photo)], ns.kubeconfig, timeout=300)
    assert pred.code == 0, pred
    head, row = pred.out.strip().splitlines()
    assert head == "file,predicted,p_glove,p_hardhat,p_vest" and row.split(",")[1] in classes, pred
# ---------------------------------------------------------------------------------------------- end of issue 20


# ---------------------------------------------------------------------------------------------- issue 22: searches

def test_a_search_runs_as_trial_jobs_prunes_and_survives_its_driver_pods_deletion(cluster, namespace, bucket,
                                                                                  tmp_path):
    """Issue 22 on the real cluster: a detached sweep with a 4-trial search (successive halving); the driver pod is
    deleted once a trial has trained an epoch (it exits 143, releasing the searches' lease); the Job's next pod
    takes the lease and carries on the study: every trial a Job of its own, asked once, none lost; a hopeless trial
    stopped at the first rung (its Job succeeded, state pruned); the report holds the search's table."""
    # one trial at a time (the node's CPUs hold one trial and the driver); seed 0 orders the grid good, hopeless,
    # hopeless, good: a hopeless trial reaching the first rung (epoch 2) after the good one is stopped there
    search = {"name": "lr", "base": {"conv_layers": 3, "filters": [8, 16, 16], "dense_units": 16, "epochs": 3,
                                     "steps_per_epoch": None},
              "sampler": "grid", "max_parallel": 1, "seed": 0,
              "space": {"learning_rate": {"choice": [0.003, 1.0e-7]}, "dropout": {"choice": [0.1, 0.4]}},
              "early_stopping": {"method": "successive_halving", "min_epochs": 2, "reduction_factor": 2}}
    doc = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    doc.update(name="search", variants=[v for v in doc["variants"] if v["name"] == "cnn-a"], searches=[search])
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    ns, st = namespace(), store(bucket, "search")
    run = submit(config, ns, bucket, "--detach", timeout=300, prefix="search")
    assert run.code == 0, run
    journal = "sweeps/search/searches/lr/journal"

    def asked() -> int:
        return sum(e["op_code"] == 4 for k in st.list(journal) for e in st.get_json(k))

    def trained() -> bool:  # a trial has checkpointed an epoch: the driver is judging it
        return any(st.get_json(k).get("epoch") for k in st.list("sweeps/search/variants")
                   if k.endswith("/status.json") and "/lr-" in k)

    first = cluster.pods(ns.name, "batch.kubernetes.io/job-name=search-driver")[0].metadata.name
    for _ in range(900):
        if asked() >= 1 and trained():
            break
        time.sleep(1)
    assert asked() >= 1 and trained()
    cluster.core.delete_namespaced_pod(first, ns.name)  # SIGTERM: the driver exits 143, releasing the lease
    for _ in range(1800):
        driver = cluster.batch.read_namespaced_job("search-driver", ns.name)
        if driver.status.succeeded or (driver.status.failed or 0) > 2:
            break
        time.sleep(1)
    pods = [p.metadata.name for p in cluster.pods(ns.name, "batch.kubernetes.io/job-name=search-driver")]
    log = cluster.core.read_namespaced_pod_log([p for p in pods if p != first][-1], ns.name)
    assert driver.status.succeeded == 1, f"{driver.status}\n{log[-3000:]}"
    assert first not in pods and "lr-3: asked by search lr" in log, log[-3000:]  # the next pod carried on the study

    assert asked() == 4  # none asked twice, none lost
    jobs = {j.metadata.name: j for j in cluster.batch.list_namespaced_job(ns.name).items}
    trials = [f"search-lr-{i}" for i in range(4)]
    assert set(trials) <= set(jobs), sorted(jobs)
    assert all(jobs[t].status.succeeded == 1 for t in trials), [(t, jobs[t].status) for t in trials]
    status = {t: st.get_json(f"sweeps/search/variants/{t[len('search-'):]}/status.json") for t in trials}
    pruned = [t for t, s in status.items() if s["phase"] == "pruned"]
    assert pruned and all(status[t]["epoch"] < 3 for t in pruned), status
    assert any(s["phase"] == "succeeded" and s["epoch"] == 3 for s in status.values()), status
    report = st.get_json("sweeps/search/report/report.json")
    assert sorted(r["trial"] for r in report["searches"]["lr"]) == [f"lr-{i}" for i in range(4)], report
    assert {r["state"] for r in report["searches"]["lr"] if f"search-{r['trial']}" in pruned} == {"pruned"}
# ---------------------------------------------------------------------------------------------- end of issue 22
