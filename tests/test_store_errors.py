"""Local file-system faults as one error line: a store path that is a file, read-only or full, the executor's
log folder and predict's output -- exit 2 (bad path) or 75 (disk full), no traceback, no marker written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, aquarium

from common.errors import EXIT_BAD_INPUT, EXIT_TRANSIENT, BadInput, TransientError
from common.store import FileStore


def one_error_line(run: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The run exited with `code` and said why in one short `error:` line naming `words`; no traceback."""
    assert run.returncode == code, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-3000:]
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and len(lines[0]) < 300, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_file_store_os_errors_become_one_line(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the store folder should be")
    store = FileStore(str(blocker))
    with pytest.raises(BadInput) as bad:
        store.put_json("sweeps/x/status.json", {})
    assert str(blocker) in str(bad.value) and "--store" in str(bad.value)
    assert store.is_complete("data") is None  # reading through the file is "missing", not a crash


def test_prepare_and_train_variant_with_a_file_as_store(tmp_path, dataset_zip):
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    run = aquarium("prepare", "--source", dataset_zip, "--store", blocker, "--image-sizes", "32")
    one_error_line(run, EXIT_BAD_INPUT, f"store file://{blocker}", "writable folder")
    run = aquarium("train-variant", "--config", ROOT / "smoke.yaml", "--variant", "cnn-a", "--store", blocker)
    one_error_line(run, EXIT_BAD_INPUT, f"store file://{blocker}")


def test_sweep_run_log_folder_in_the_way(tmp_path):
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    run = aquarium("sweep", "run", "--config", ROOT / "smoke.yaml", "--store", blocker, cwd=tmp_path)
    one_error_line(run, EXIT_BAD_INPUT, "log folder", str(blocker))


def in_own_mount(tmp_path, mount_opts: str, *args) -> subprocess.CompletedProcess:
    """`aquarium ARGS` with tmp_path/mnt a private tmpfs (`mount_opts`), in a mount namespace of its own: the host
    is untouched and the mount goes away with the process. Prints the _SUCCESS markers left behind last."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli = " ".join(f"'{a}'" for a in [sys.executable, "-m", "jobs.cli", *map(str, args)])
    script = (f"mount -t tmpfs -o {mount_opts} tmpfs {mnt} || exit 99; cd {ROOT}; {cli}; rc=$?; "
              f"echo markers: $(find {mnt} -name _SUCCESS); exit $rc")
    run = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode != 99, run.stderr
    return run


def test_prepare_on_a_full_disk_is_transient_and_marks_nothing(tmp_path, dataset_zip):
    run = in_own_mount(tmp_path, "size=96k", "prepare", "--source", dataset_zip, "--store", tmp_path / "mnt",
                       "--image-sizes", "32")
    one_error_line(run, EXIT_TRANSIENT, f"store file://{tmp_path}/mnt", "No space left on device", "rerun")
    assert run.stdout.strip().splitlines()[-1] == "markers:"  # no _SUCCESS anywhere


def test_prepare_on_a_read_only_store_is_bad_input(tmp_path, dataset_zip):
    run = in_own_mount(tmp_path, "ro", "prepare", "--source", dataset_zip, "--store", tmp_path / "mnt",
                       "--image-sizes", "32")
    one_error_line(run, EXIT_BAD_INPUT, "Read-only file system", "writable folder")


def test_from_os_error_codes(tmp_path):
    from common.errors import from_os_error

    assert isinstance(from_os_error(OSError(28, "No space left on device", "/x"), "store", "fix"), TransientError)
    err = from_os_error(NotADirectoryError(20, "Not a directory", "/x/y"), "store file:///x", "use a folder")
    assert isinstance(err, BadInput) and str(err) == "store file:///x: /x/y: Not a directory: use a folder"


def test_predict_output_to_a_full_device(tmp_path):
    """`predict ... > /dev/full`: the CSV cannot be written -- one line, exit 75, not a traceback at exit."""
    import keras
    import numpy as np
    from PIL import Image

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(7, activation="softmax")])
    model.save(tmp_path / "model.keras")
    (tmp_path / "metrics.json").write_text('{"classes": ["a", "b", "c", "d", "e", "f", "g"]}')  # predict's names
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(tmp_path / "a.jpg")
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-m", "jobs.cli", "predict", "--model", tmp_path / "model.keras",
                              tmp_path / "a.jpg"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True,
                             timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    run.stdout = ""
    one_error_line(run, EXIT_TRANSIENT, "writing the output (stdout)", "No space left on device")
