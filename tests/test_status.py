"""Variant state in one place: `_SUCCESS` counts only with the current config hash and training revision;
command-line overrides resolve once (validated again); one S3 endpoint precedence."""

from __future__ import annotations

import pytest
from artefacts import sweep_spec, write_variant
from helpers import ROOT

from common import status
from common.config import load_sweep, resolve
from common.errors import BadInput
from common.report import collect
from common.store import FileStore, join, s3_endpoint


@pytest.fixture
def store(tmp_path) -> FileStore:
    return FileStore(str(tmp_path / "store"))


def test_a_marker_of_an_older_training_revision_is_stale_everywhere(store, monkeypatch):
    sweep = sweep_spec([("now", "cnn"), ("before", "cnn")])
    write_variant(store, sweep, "now")
    write_variant(store, sweep, "before")
    before = sweep.variant("before")
    record = store.is_complete(sweep.variant_prefix("before"))
    assert record == status.marker(before) and status.is_finished(store, sweep, before)

    monkeypatch.setattr(status, "TRAINING_REVISION", status.TRAINING_REVISION + 1)  # the code changed meaning
    assert not status.is_finished(store, sweep, before) and not status.is_finished(store, sweep, "now")
    seen = status.read(store, sweep, before)
    assert seen.state == "stale" and seen.done == "stale"
    assert seen.error == status.stale_reason(record, before)
    assert f"revision {status.TRAINING_REVISION - 1}" in seen.error and "rerun the variant" in seen.error
    assert {r.name: r.state for r in collect(store, sweep)} == {"now": "stale", "before": "stale"}
    rows = status.status_rows(store, sweep)
    assert [r["done"] for r in rows] == ["stale", "stale"] and rows[0]["phase"] == "succeeded (stale)"


def test_markers_without_a_revision_are_revision_zero(store):
    sweep = sweep_spec([("old", "cnn")])
    v = sweep.variant("old")
    assert not status.is_current({"config_hash": v.config_hash}, v)
    assert status.is_current(status.marker(v), v)
    assert not status.is_current({}, v) and not status.is_current(None, v)
    store.mark_complete(sweep.variant_prefix("old"), {"config_hash": v.config_hash})
    assert status.read(store, sweep, v).state == "stale"


def test_succeeded_without_success_marker_is_incomplete(store):
    sweep = sweep_spec([("half", "cnn")])
    write_variant(store, sweep, "half", finished=False)  # status says succeeded, no _SUCCESS
    seen = status.read(store, sweep, sweep.variant("half"))
    assert seen.state == "incomplete" and "_SUCCESS is missing" in seen.error
    store.put_text(join(sweep.variant_prefix("half"), "status.json"), "{not json")
    seen = status.read(store, sweep, sweep.variant("half"))
    assert seen.state == "pending" and "is not valid JSON" in seen.error


def test_resolve_applies_overrides_once_and_validates_again(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    spec = load_sweep(ROOT / "smoke.yaml")
    sweep = resolve(spec, store="s3://b/p", source="s3://b/zip", sha256="", synthesize=False, image="img:1")
    assert (sweep.store, sweep.dataset.source, sweep.dataset.sha256, sweep.kubernetes.image) == \
        ("s3://b/p", "s3://b/zip", "", "img:1")
    assert sweep.dataset.prefix == spec.dataset.prefix and sweep.endpoint == spec.endpoint
    assert [v.config_hash for v in sweep.variants] == [v.config_hash for v in spec.variants]
    assert resolve(spec).model_dump() == spec.model_dump()  # nothing given: nothing changes
    with pytest.raises(BadInput, match="command line: kubernetes.namespace"):
        resolve(spec, namespace=["not", "a", "name"])


def test_endpoint_precedence_command_line_then_environment_then_spec(monkeypatch):
    env = {"AWS_ENDPOINT_URL": "http://env:9000"}
    assert s3_endpoint("http://cli:9000", "http://spec:9000", env) == "http://cli:9000"
    assert s3_endpoint(None, "http://spec:9000", env) == "http://env:9000"
    assert s3_endpoint(None, "http://spec:9000", {"AWS_ENDPOINT_URL_S3": "http://s3:1", **env}) == "http://s3:1"
    assert s3_endpoint(None, "http://spec:9000", {}) == "http://spec:9000"
    assert s3_endpoint(None, None, {}) is None
    spec = load_sweep(ROOT / "smoke.yaml")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    assert resolve(spec).endpoint == "http://env:9000"
    assert resolve(spec, endpoint="http://cli:9000").endpoint == "http://cli:9000"
