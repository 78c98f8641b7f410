"""Messages a person can read: one line under ~200 characters naming what and where (issue 11, item 8).
The duplicate-variant and bad-row messages are tested beside their features (test_config, test_prepare)."""

from __future__ import annotations

import zipfile

from helpers import aquarium


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
