"""The one-machine executor: docker argv, parallelism, the status table, a failing prepare, nothing to aggregate."""

from __future__ import annotations

import io
import os
import sys

import yaml
from artefacts import sweep_spec, write_variant
from helpers import ROOT, aquarium

from common.config import load_sweep
from common.executor import Executor, Step, default_parallel, docker_argv, job_argv
from common.status import status_rows
from common.store import FileStore
from common.table import render


def test_docker_argv_passes_aws_by_name_and_mounts_local_paths(tmp_path):
    sweep = load_sweep(ROOT / "smoke.yaml")
    zip_path = tmp_path / "data.zip"
    zip_path.write_bytes(b"PK")
    store = f"file://{tmp_path}/store"
    argv = job_argv(sweep, "prepare", "/cfg/smoke.yaml", store=store, source=str(zip_path))
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cret", "AWS_ENDPOINT_URL": "http://x:9000",
           "HOME": "/root", "PATH": "/bin"}
    cmd = docker_argv("aquarium-sweep:cpu", argv, store, "/cfg/smoke.yaml", str(zip_path), env=env,
                      extra_env={"TF_NUM_INTRAOP_THREADS": "2"})
    assert cmd[:5] == ["docker", "run", "--rm", "--network", "host"]
    i = cmd.index("aquarium-sweep:cpu")
    assert cmd[i + 1:] == argv  # the job's argv unchanged, after the image (ENTRYPOINT is `aquarium`)
    opts = cmd[5:i]
    assert [opts[j + 1] for j, o in enumerate(opts) if o == "-e"] == [
        "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY", "TF_NUM_INTRAOP_THREADS=2"]
    assert not any("s3cret" in o or "AKIAEXAMPLE" in o or "HOME" in o for o in cmd)
    mounts = [opts[j + 1] for j, o in enumerate(opts) if o == "-v"]
    assert mounts == [f"{tmp_path}/store:{tmp_path}/store", "/cfg/smoke.yaml:/cfg/smoke.yaml:ro",
                      f"{zip_path}:{zip_path}:ro"]
    assert opts[opts.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"


def test_docker_argv_passes_the_weights_and_precision_settings_and_mounts_a_weights_folder(tmp_path):
    argv = ["finetune-variant", "--config", "/c.yaml", "--variant", "m", "--store", "s3://b/p"]
    env = {"AQUARIUM_WEIGHTS": str(tmp_path), "AQUARIUM_PRECISION": "float32", "AQUARIUM_OTHER": "x"}
    cmd = docker_argv("img", argv, "s3://b/p", "/c.yaml", env=env)
    assert cmd == ["docker", "run", "--rm", "--network", "host", "-e", "AQUARIUM_PRECISION", "-e", "AQUARIUM_WEIGHTS",
                   "-v", f"{tmp_path}:{tmp_path}:ro", "-v", "/c.yaml:/c.yaml:ro", "img", *argv]
    staged = docker_argv("img", argv, "s3://b/p", "/c.yaml", env={"AQUARIUM_WEIGHTS": "s3://b/weights/"})
    assert staged == ["docker", "run", "--rm", "--network", "host", "-e", "AQUARIUM_WEIGHTS",
                      "-v", "/c.yaml:/c.yaml:ro", "img", *argv]


def test_docker_argv_for_s3_mounts_only_the_config():
    argv = ["aggregate", "--config", "/c.yaml", "--store", "s3://b/p"]
    cmd = docker_argv("img", argv, "s3://b/p", "/c.yaml", env={}, gpu="1")
    assert cmd == ["docker", "run", "--rm", "--network", "host", "--gpus", "device=1",
                   "-v", "/c.yaml:/c.yaml:ro", "img", *argv]


def test_default_parallel():
    sweep = load_sweep(ROOT / "smoke.yaml")  # max_parallel: 2
    assert default_parallel(sweep, gpus=0, cpus=2) == 1
    assert default_parallel(sweep, gpus=0, cpus=16) == 2
    assert default_parallel(sweep, gpus=1, cpus=16) == 1
    big = load_sweep(ROOT / "sweep.yaml")  # no cap
    assert default_parallel(big, gpus=4, cpus=64) == 4
    assert default_parallel(big, gpus=0, cpus=12) == 6
    assert default_parallel(big, gpus=0, cpus=1) == 1


def test_status_table_from_the_store(tmp_path):
    store = FileStore(str(tmp_path / "store"))
    sweep = sweep_spec([("done", "cnn"), ("busy", "cnn"), ("new", "cnn")])
    write_variant(store, sweep, "done", val_acc=0.625)
    write_variant(store, sweep, "busy", val_acc=0.25, phase="running", finished=False)
    rows = {r["variant"]: r for r in status_rows(store, sweep)}
    assert rows["done"]["phase"] == "succeeded" and rows["done"]["done"] == "yes"
    assert rows["done"]["epoch"] == "3/3" and rows["done"]["best val"] == "0.625"
    assert rows["done"]["elapsed"] == "0:01:00"
    assert rows["busy"]["phase"] == "running" and rows["busy"]["epoch"] == "1/3" and rows["busy"]["done"] == "no"
    assert rows["new"]["phase"] == "pending" and rows["new"]["epoch"] == "0/3" and rows["new"]["val acc"] == ""
    lines = render(status_rows(store, sweep)).splitlines()
    assert lines[0].split() == ["variant", "phase", "epoch", "val", "acc", "best", "val", "elapsed", "done"]
    assert lines[1].split()[:3] == ["done", "succeeded", "3/3"]


def test_failed_prepare_stops_the_sweep(tmp_path):
    """A bad dataset source: prepare exits 2, no variant starts, the sweep exits 2 and says why."""
    run = aquarium("sweep", "run", "--config", ROOT / "smoke.yaml", "--source", tmp_path / "no-such.zip",
                   "--store", tmp_path / "store", cwd=tmp_path, timeout=300)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "prepare: FAILED" in run.stdout
    assert "prepare failed (exit 2): dataset source " in run.stdout  # the job's own error line, on the terminal
    assert "no-such.zip' not found" in run.stdout and "; variants not run" in run.stdout
    assert "started" not in run.stdout
    log = tmp_path / "store" / "logs" / "smoke" / "prepare.log"
    assert "no-such.zip" in log.read_text()
    assert not (tmp_path / "store" / "sweeps").exists()


def test_a_retried_step_counts_its_time_from_its_first_start(tmp_path):
    """A transient exit (75) queues a retry; once restarted, the live table shows time since the first start,
    never a negative running time (the previous attempt's end minus the new start)."""
    sweep = sweep_spec([("v", "cnn")]).model_copy(update={"store": f"file://{tmp_path}/store"})
    executor = Executor(sweep, str(tmp_path / "sweep.yaml"), out=io.StringIO())
    executor.command = lambda step: ([sys.executable, "-c", "raise SystemExit(75)"], dict(os.environ))
    step = Step("train-variant", "v", [], tmp_path / "v.log")
    executor.start(step)
    step.proc.wait()
    assert not executor.reap(step) and step.state == "retrying"
    first_start = step.started
    executor.start(step)  # the retry
    assert step.started == first_start and step.ended is None
    assert step.seconds >= 0 and step.describe().startswith("running ") and "-" not in step.describe()
    step.proc.wait()


def test_no_variant_with_a_result_leaves_aggregate_out_and_exits_2(tmp_path, dataset_zip):
    """The schedule's rule through the real executor: the only variant fails at start (its weights file does not
    exist), so there is nothing to compare -- aggregate is not started and the sweep exits 2."""
    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["variants"] = [{"name": "bad", "kind": "finetune", "image_size": 64, "weights": "/nonexistent/w.weights.h5",
                        "epochs": 1}]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(raw))
    run = aquarium("sweep", "run", "--config", config, "--source", dataset_zip, "--store", tmp_path / "store",
                   cwd=tmp_path, timeout=600)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "prepare: done" in run.stdout and "bad: FAILED" in run.stdout
    assert "aggregate not run: nothing to aggregate: no variant has a result" in run.stdout
    assert "aggregate: starting" not in run.stdout
    assert not (tmp_path / "store" / "logs" / "smoke" / "aggregate.log").exists()


def test_terminate_ends_each_childs_process_group_with_sigterm(monkeypatch):
    """Ctrl-C of a sweep: each job gets SIGTERM in its own session (it checkpoints and exits 143); one that ignores
    it is killed once the grace period is over, and its own children go with it."""
    import signal
    import subprocess

    from common import executor

    monkeypatch.setattr(executor, "TERM_GRACE_S", 2)
    code_143 = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); " \
               "print('up', flush=True); time.sleep(60)"
    deaf = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
           "print(child.pid, flush=True); time.sleep(60)"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              start_new_session=True) for code in (code_143, deaf)]
    first_line = [p.stdout.readline().strip() for p in procs]
    grandchild = int(first_line[1])
    executor.terminate(procs)
    assert procs[0].returncode == 143 and procs[1].returncode == -signal.SIGKILL
    assert wait_until_gone(grandchild), f"the ignoring job's own child {grandchild} outlived the SIGKILL"


def wait_until_gone(pid: int, tries: int = 100) -> bool:
    """A SIGKILLed process is torn down asynchronously: poll until it is gone or a zombie awaiting its reaper."""
    import time

    for _ in range(tries):
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False
