"""One writer per variant and per prepared dataset (issue 11, item 9): a lease object in the store, taken with a
conditional create, renewed while the job runs, taken over when its holder dies."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
import yaml
from helpers import ROOT, aquarium

from common import lease
from common.config import load_sweep
from common.store import FileStore, open_store


def small_spec(tmp_path: Path, names=("cnn-a",), **changes) -> Path:
    """smoke.yaml with only the named CNN variants (fast), under a fresh sweep name."""
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["name"] = "l" + uuid.uuid4().hex[:8]
    raw["variants"] = [{**v, **changes} for v in raw["variants"] if v["name"] in names]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def s3_store(s3_server):
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = "l-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        yield f"s3://{bucket}/store", env, open_store(f"s3://{bucket}/store")
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_conditional_create_has_one_winner(s3_store, tmp_path):
    for store in (s3_store[2], FileStore(str(tmp_path / "store"))):
        assert store.create_exclusive("_leases/x.json", b'{"a": 1}') is True
        assert store.create_exclusive("_leases/x.json", b'{"a": 2}') is False  # If-None-Match: * / link
        assert store.get_json("_leases/x.json") == {"a": 1}


def test_second_writer_waits_for_the_first_and_names_it(tmp_path):
    store, said, order = FileStore(str(tmp_path / "store")), [], []

    def second():
        with lease.held(store, "data", "dataset data", say=said.append, ttl=3):
            order.append("second")

    with lease.held(store, "data", "dataset data", ttl=3):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(4)  # longer than the ttl: renewals keep the lease alive
        order.append("first done")
    waiter.join(10)
    assert order == ["first done", "second"]
    assert len(said) == 1 and said[0].startswith("dataset data: waiting: ")
    assert f"pid {os.getpid()}" in said[0] and not store.exists(lease.lease_key("data"))


def test_a_dead_holder_on_this_machine_is_taken_over_at_once(tmp_path):
    """SIGKILL leaves the lease behind; on the same machine the next writer sees the process is gone."""
    store = FileStore(str(tmp_path / "store"))
    code = ("import sys, time; from common import lease, store; "
            f"lease.acquire(store.FileStore({str(store.root)!r}), 'data', 'dataset data'); print('held', flush=True); "
            "time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait()
    said = []
    # a TTL far longer than the test's timeout: only seeing the process gone can explain a takeover
    with lease.held(store, "data", "dataset data", say=said.append, ttl=3600):
        pass
    assert len(said) == 1
    assert said[0].startswith("dataset data: taking over the lease of ") and "(its process is gone)" in said[0]


def start(args, env, log: Path, wrapper=()) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([*wrapper, sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_holder_is_taken_over_after_expiry(s3_store, dataset_zip, tmp_path):
    uri, env, store = s3_store
    # a TTL that renewals (every TTL/3) meet even on a loaded machine; epochs enough that the holder is still
    # training when the waiter (TensorFlow import included) arrives
    env = {**env, "AQUARIUM_LEASE_TTL": "15", "TF_CPP_MIN_LOG_LEVEL": "3"}
    assert aquarium("prepare", "--source", dataset_zip, "--store", uri, "--image-sizes", "32", env=env).returncode == 0
    config = small_spec(tmp_path, epochs=300, early_stopping_patience=300, lr_patience=300)
    sweep = load_sweep(config)
    prefix = sweep.variant_prefix("cnn-a")
    args = ["train-variant", "--config", config, "--variant", "cnn-a", "--store", uri]
    # the holder in a PID namespace of its own: to the waiter it is a process elsewhere (another pod or
    # machine), whose death it cannot see -- only the lease running out tells
    holder = start(args, env, tmp_path / "holder.log", wrapper=("unshare", "--pid", "--fork", "--kill-child"))
    wait_for(lambda: store.exists(f"{prefix}/checkpoint/state.json"), 300, "the holder's first checkpoint")
    waiter = start(args, env, tmp_path / "waiter.log")
    wait_for(lambda: "waiting:" in (tmp_path / "waiter.log").read_text(), 120, "the waiter's line")
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    checkpointed = store.get_json(f"{prefix}/checkpoint/state.json")["epoch"]
    assert waiter.wait(600) == 0, (tmp_path / "waiter.log").read_text()[-3000:]
    text = (tmp_path / "waiter.log").read_text()
    waiting = [line for line in text.splitlines() if "waiting:" in line]
    assert len(waiting) == 1 and f" on {socket.gethostname()}, since " in waiting[0]
    assert "taking over the lease of" in text and "(not renewed for" in text
    assert f"resuming after epoch {checkpointed}" in text  # the dead holder's work is resumed, not redone
    # the waiter took over only once the lease ran out, by the lease's own clock (the TTL less one renewal interval)
    idle = int(re.search(r"\(not renewed for (\d+) s\)", text).group(1))
    assert idle >= 10, text[-2000:]
    assert store.is_complete(prefix) is not None and not store.exists(lease.lease_key(prefix))


def test_two_sweeps_at_once_do_the_work_once(s3_store, dataset_zip, tmp_path):
    uri, env, store = s3_store
    env = {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}
    config = small_spec(tmp_path, names=("cnn-a", "cnn-b"))
    runs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()  # each sweep keeps its job logs in its own ./logs
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "sweep", "run", "--config", config, "--source", dataset_zip,
             "--store", uri, "--max-parallel", "1"], cwd=tmp_path / name, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
        time.sleep(1)
    outputs = [r.communicate(timeout=840)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    sweep = load_sweep(config)
    both = {name: [(tmp_path / run / "logs" / sweep.name / f"{name}.log").read_text() for run in ("one", "two")]
            for name in ("prepare", "cnn-a", "cnn-b")}
    assert sum(len(re.findall(r"^writing \d+ images", t, re.M)) for t in both["prepare"]) == 1, both["prepare"]
    for name in ("cnn-a", "cnn-b"):
        assert sum(text.count("Epoch 1/") for text in both[name]) == 1, both[name]  # trained once
        assert sum(text.count("waiting:") for text in both[name]) <= 1
        assert store.is_complete(sweep.variant_prefix(name)) is not None
    assert any("waiting:" in text for texts in both.values() for text in texts)  # one really waited
    assert not store.list("_leases")
