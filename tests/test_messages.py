"""Messages a person can read: one line under ~200 characters naming what and where (issue 11, item 8).
The duplicate-variant and bad-row messages are tested beside their features (test_config, test_prepare)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile

from helpers import ROOT, aquarium


def test_predict_with_a_file_that_is_not_a_keras_model(tmp_path):
    text = tmp_path / "model.keras"
    text.write_text("not a model")
    archive = tmp_path / "other" / "model.keras"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "a zip, but not one Keras saved")
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8")
    for model, words in ((text, "is not a Keras model file"), (archive, "is not a loadable Keras model")):
        run = aquarium("predict", "--model", model, tmp_path / "a.jpg", cwd=tmp_path)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1, run.stderr
        assert lines[0].startswith(f"error: file://{model} {words}") and len(lines[0]) < 220, lines[0]
        assert "File not found" not in lines[0]


def test_sigterm_as_pid_1_before_training_starts_ends_the_command(tmp_path):
    """In a pod `aquarium` is PID 1, which the kernel only signals through a handler: a SIGTERM that arrives while
    the command is still importing must end it (143), not be dropped until the grace period runs out."""
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"name: t\nstore: file://{tmp_path}/store\ndataset: {{source: {tmp_path}/none.zip}}\n"
                    "variants:\n  - {name: a, epochs: 1}\n")
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "jobs.cli",
                             "train-variant", "--config", str(spec), "--variant", "a"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    child = []
    while not child:  # PID 1 of the new namespace, as seen from here
        time.sleep(0.2)
        child = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    time.sleep(0.5)  # the command is importing click, TensorFlow...: no training handler yet
    os.kill(int(child[0]), signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, proc.stderr.read().decode()[-300:]
