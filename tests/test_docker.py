"""The real image: build it (CPU TensorFlow, a registry-free Debian base, the CA bundle) and run the jobs in it
against the real S3 test server on 127.0.0.1, the way a pod runs them (read-only root, tmpfs /tmp and home, all
capabilities dropped, non-root).

Needs dockerd. `.ci/docker-setup.sh` installs and starts it (bridge-less: every container uses --network host)
and builds the base image with debootstrap. Under CI=true a missing Docker fails the test; elsewhere it skips with
the reason. Env: AQUARIUM_TEST_BASE_IMAGE (default aquarium-base:bookworm), AQUARIUM_TEST_PIP_INDEX_URL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import make_dataset
from helpers import ROOT

SETUP = ROOT / ".ci" / "docker-setup.sh"
IMAGE = "aquarium-sweep:test-cpu"
BASE = os.environ.get("AQUARIUM_TEST_BASE_IMAGE", "aquarium-base:bookworm")
IN_CI = os.environ.get("CI", "").lower() == "true"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"docker test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"docker not available: {reason}")


def _docker_ok() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def docker():
    """Docker daemon + base image ready (runs .ci/docker-setup.sh, which is idempotent and cached)."""
    if not IN_CI and not _docker_ok() and os.geteuid() != 0:
        _unavailable("no running dockerd and not root to start one (run .ci/docker-setup.sh)")
    if BASE == "aquarium-base:bookworm" or IN_CI or not _docker_ok():
        res = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=1200)
        if res.returncode != 0:
            _unavailable(f".ci/docker-setup.sh failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    if not _docker_ok():
        _unavailable("`docker info` fails after .ci/docker-setup.sh")


@pytest.fixture(scope="module")
def image(docker):
    """Build the CPU image on the registry-free base, trusting this machine's CA bundle (layer cache reused)."""
    ca = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    args = ["docker", "build", "--network", "host", "-t", IMAGE, "--build-arg", f"BASE_IMAGE={BASE}",
            "--build-arg", "TF_EXTRA=cpu"]
    if ca.is_file():
        (ROOT / "build").mkdir(exist_ok=True)
        shutil.copyfile(ca, ROOT / "build" / "ca-bundle.crt")
        args += ["--build-arg", "CA_BUNDLE=build/ca-bundle.crt"]
    if os.environ.get("AQUARIUM_TEST_PIP_INDEX_URL"):
        args += ["--build-arg", f"PIP_INDEX_URL={os.environ['AQUARIUM_TEST_PIP_INDEX_URL']}"]
    t0 = time.monotonic()
    res = subprocess.run(args + [str(ROOT)], capture_output=True, text=True, timeout=1500)
    took = time.monotonic() - t0
    assert res.returncode == 0, f"docker build failed after {took:.0f} s:\n{(res.stdout + res.stderr)[-4000:]}"
    print(f"\ndocker build {IMAGE} on {BASE}: {took:.0f} s", file=sys.stderr)
    return IMAGE


def run(image: str, argv: list[str], env: dict[str, str], mounts: list[str] = (), entrypoint: str | None = None,
        timeout: int = 900) -> subprocess.CompletedProcess:
    """`docker run` as a pod runs: host network (never a bridge), read-only root, tmpfs /tmp and home,
    no capabilities, no privilege escalation; AWS_* passed by name."""
    cmd = ["docker", "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp:rw,mode=1777,size=2g",
           "--tmpfs", "/home/app:rw,uid=10001,gid=10001,size=256m", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges"]
    for name in sorted(env):
        cmd += ["-e", name]
    for m in mounts:
        cmd += ["-v", m]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return subprocess.run(cmd + [image, *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


@pytest.fixture
def s3(s3_server):
    import boto3

    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = "docker-" + uuid.uuid4().hex[:10]
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return env, f"s3://{bucket}/store"


def _store(env, uri):
    from common.store import open_store

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return open_store(uri)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_image_metadata_non_root_and_entrypoint(image):
    info = json.loads(subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True,
                                     check=True).stdout)[0]["Config"]
    assert info["Entrypoint"] == ["aquarium"]
    assert info["User"] == "10001:10001"
    assert "HOME=/home/app" in info["Env"]
    res = run(image, ["-c", "id -u; test -w /tmp && echo tmp-writable; touch /app/x 2>/dev/null || echo app-ro; "
                            "python -c 'import tensorflow, sys; print(tensorflow.__version__)'"], {},
              entrypoint="sh")
    assert res.returncode == 0, res.stderr
    out = res.stdout.split()
    assert out[0] != "0" and out[0] == "10001"
    assert "tmp-writable" in out and "app-ro" in out
    assert out[-1] == "2.21.0"
    res = run(image, ["--help"], {})
    assert res.returncode == 0 and "prepare" in res.stdout and "train-variant" in res.stdout


def test_prepare_and_one_variant_in_the_container_against_s3(image, s3, tmp_path):
    from common.config import load_sweep
    from common.executor import job_argv

    env, store_uri = s3
    sweep = load_sweep(ROOT / "smoke.yaml")
    zip_path = make_dataset(tmp_path / "aquarium-small.zip")
    zip_path.chmod(0o644)
    in_container = "/data/aquarium-small.zip"

    # bad input: a missing dataset exits 2 -- the code the Jobs' podFailurePolicy turns into FailJob
    bad = run(image, job_argv(sweep, "prepare", "smoke.yaml", store=store_uri, source="/data/missing.zip"), env)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert len([line for line in bad.stderr.splitlines() if line.startswith("error:")]) == 1

    prep = run(image, job_argv(sweep, "prepare", "smoke.yaml", store=store_uri, source=in_container), env,
               mounts=[f"{zip_path}:{in_container}:ro"])
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    store = _store(env, store_uri)
    assert store.is_complete(sweep.dataset.prefix) is not None
    for size in sweep.image_sizes:
        index = store.get_json(f"{sweep.dataset.prefix}/tensors/{size}/index.json")  # sharded (issue 21)
        assert index["format"] == "tfrecord-v1" and index["splits"]["train"]["images"] > 0
        assert store.exists(f"{sweep.dataset.prefix}/tensors/{size}/" + index["splits"]["train"]["shards"][0]["file"])

    variant = sweep.variant("cnn-a")
    train = run(image, job_argv(sweep, variant.job, "smoke.yaml", variant="cnn-a", store=store_uri), env)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    prefix = sweep.variant_prefix("cnn-a")
    done = store.is_complete(prefix)
    assert done is not None and done.get("config_hash") == variant.config_hash
    assert store.exists(f"{prefix}/model.keras")
    metrics = store.get_json(f"{prefix}/metrics.json")
    assert 0.0 <= metrics["val_accuracy"] <= 1.0 and 0.0 <= metrics["test_accuracy"] <= 1.0

    # a second run of the same variant is a no-op: the finished result with this config is found in the store
    again = run(image, job_argv(sweep, variant.job, "smoke.yaml", variant="cnn-a", store=store_uri), env)
    assert again.returncode == 0 and "skipped" in again.stdout

    # the fine-tune from ImageNet weights staged once in S3 (AQUARIUM_WEIGHTS, passed like the AWS settings)
    from common.models import IMAGENET_FILES

    shared = Path(os.environ.get("AQUARIUM_WEIGHTS", "")) / IMAGENET_FILES["small"][1]
    assert shared.is_file(), f"smoke.yaml's mnv3 needs {shared.name}: set AQUARIUM_WEIGHTS to ../shared/weights"
    store.upload(f"weights/{shared.name}", shared)
    staged = {**env, "AQUARIUM_WEIGHTS": f"{store_uri}/weights/"}
    tune = run(image, job_argv(sweep, "finetune-variant", "smoke.yaml", variant="mnv3", store=store_uri), staged)
    assert tune.returncode == 0, tune.stdout[-3000:] + tune.stderr[-3000:]
    assert "weights ImageNet (mobilenet_v3_small_imagenet_no_top.weights.h5)" in tune.stderr
    assert store.is_complete(sweep.variant_prefix("mnv3")) is not None
