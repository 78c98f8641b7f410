"""A 20-second S3 outage in the middle of `aquarium sweep run` (issue 11, item 6): the sweep completes, and no
epoch that was checkpointed is trained again.

The outage is real at the TCP level: the jobs reach the moto server through a small proxy on 127.0.0.1 that
the test closes (connections refused, open ones cut) and reopens 20 s later -- the server itself keeps its data
in memory and must live on. AWS_MAX_ATTEMPTS=2 makes sure the outage reaches the jobs (botocore's default
budget here could absorb it), so the executor's retries of exit 75 are what gets the sweep through.
"""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from unittest import mock

import boto3
import pytest
import yaml
from helpers import ROOT

from common.config import load_sweep
from common.store import open_store

OUTAGE_S = 20


class Proxy:
    """TCP forwarder 127.0.0.1:port -> target; `stop` refuses and cuts connections, `start` serves again."""

    def __init__(self, target_port: int):
        self.target, self.conns, self.running = target_port, [], False
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def start(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.running = True
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self.running:
            try:
                client, _ = listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self.running = False
        self.listener.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
        self.conns = []


def attempts(log: str) -> list[dict]:
    """Each start of the job in its log (the executor writes a `=== time command` line before each): the
    epochs it trained, the epochs it checkpointed and the epoch it resumed after."""
    out = []
    for part in log.split("\n=== ")[1:]:
        resumed = re.search(r"resuming after epoch (\d+)", part)
        out.append({"trained": [int(n) for n in re.findall(r"^Epoch (\d+)/", part, re.M)],
                    "saved": [int(n) for n in re.findall(r"epoch (\d+) checkpointed", part)],
                    "resumed": int(resumed.group(1)) if resumed else 0})
    return out


def test_sweep_survives_a_20s_store_outage_without_retraining_checkpointed_epochs(s3_server, dataset_zip, tmp_path):
    moto_port = int(s3_server.rsplit(":", 1)[1])
    proxy = Proxy(moto_port)
    proxy.start()
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = "o-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=s3_server, **{k.lower(): v for k, v in creds.items() if "KEY" in k},
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/store"
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["name"] = "o" + uuid.uuid4().hex[:8]
    raw["variants"] = [{**v, "epochs": 8, "early_stopping_patience": 20, "lr_patience": 20}
                       for v in raw["variants"] if v.get("kind", "cnn") == "cnn"]
    config = tmp_path / "spec.yaml"
    config.write_text(yaml.safe_dump(raw))
    sweep = load_sweep(config)
    env = {**os.environ, **creds, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}", "AWS_MAX_ATTEMPTS": "2",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.Popen([sys.executable, "-m", "jobs.cli", "sweep", "run", "--config", config, "--source",
                            dataset_zip, "--store", uri, "--max-parallel", "2"], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # the store as the test sees it: straight to the server, never through the proxy
    with mock.patch.dict(os.environ, creds):  # credentials are read when the client is made
        direct = open_store(uri, s3_server)
    state = f"{sweep.variant_prefix('cnn-a')}/checkpoint/state.json"
    deadline = time.monotonic() + 600
    while not (direct.exists(state) and direct.get_json(state)["epoch"] >= 2):
        if time.monotonic() > deadline or run.poll() is not None:
            pytest.fail(f"no checkpoint at epoch 2 before the outage:\n{run.communicate()[0][-3000:]}")
        time.sleep(0.3)
    proxy.stop()  # the outage, in the middle of training
    time.sleep(OUTAGE_S)
    proxy.start()
    out = run.communicate(timeout=840)[0]
    assert run.returncode == 0, out[-4000:]
    assert "transient failure (exit 75)" in out and "resuming from its checkpoint" in out, out[-4000:]
    for name in sweep.names:
        prefix = sweep.variant_prefix(name)
        assert direct.is_complete(prefix) is not None, out[-3000:]
        history = list(csv.DictReader(io.StringIO(direct.get_text(f"{prefix}/history.csv"))))
        assert [int(r["epoch"]) for r in history] == list(range(1, 9))
        tries = attempts((tmp_path / "logs" / sweep.name / f"{name}.log").read_text())
        saved, trained = set(), set()
        for t in tries:
            if t["trained"] or t["resumed"]:  # (a start that failed before training resumed nothing)
                # resumes after its last logged checkpoint -- or after a later epoch it trained, whose state.json
                # reached the server while the outage cut the reply, so the job never logged it
                assert max(saved, default=0) <= t["resumed"] <= max(trained, default=0), tries
                assert t["trained"][:1] in ([], [t["resumed"] + 1]), tries  # ...and goes on from the next epoch
            assert not saved & set(t["trained"]), tries  # never trains a checkpointed epoch again
            saved |= set(t["saved"])
            trained |= set(t["trained"])
        resumed = max((t["resumed"] for t in tries), default=0)
        assert saved | set(range(1, resumed + 1)) == set(range(1, 9)), tries  # every epoch reached the store
    retried = [n for n in sweep.names if len(attempts((tmp_path / "logs" / sweep.name / f"{n}.log").read_text())) > 1]
    assert retried, out[-3000:]  # the outage really hit a job, and the executor ran it again
