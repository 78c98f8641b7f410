"""Both store back ends through the same tests: a local folder and a real S3 server (moto) over HTTP."""

from __future__ import annotations

import errno
import os
import uuid

import pytest

from common.errors import BadInput
from common.store import FileStore, S3Store, open_store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(f"file://{tmp_path}/store")
    return open_store(request.getfixturevalue("s3_env"))


def test_open_store_picks_the_back_end(tmp_path, s3_env):
    assert isinstance(open_store(str(tmp_path)), FileStore)
    assert isinstance(open_store(f"file://{tmp_path}"), FileStore)
    s3 = open_store(s3_env)
    assert isinstance(s3, S3Store) and s3.uri == s3_env
    with pytest.raises(BadInput, match="no bucket"):
        open_store("s3:///x")
    with pytest.raises(BadInput, match="unsupported scheme"):
        open_store("ftp://host/x")


def test_put_get_text_json_bytes(store):
    store.put_bytes("a/b.bin", b"\x00\x01\xff")
    store.put_text("a/c.txt", "héllo")
    store.put_json("d.json", {"x": [1, 2], "y": None})
    assert store.get_bytes("a/b.bin") == b"\x00\x01\xff"
    assert store.get_text("a/c.txt") == "héllo"
    assert store.get_json("d.json") == {"x": [1, 2], "y": None}
    store.put_bytes("a/b.bin", b"new")  # overwrite
    assert store.get_bytes("a/b.bin") == b"new"
    assert store.exists("a/c.txt") and not store.exists("a/nope.txt")
    assert store.url("a/c.txt") == store.uri + "/a/c.txt"


def test_missing_key_is_key_error(store, tmp_path):
    with pytest.raises(KeyError):
        store.get_bytes("no/such/key")
    with pytest.raises(KeyError):
        store.download("no/such/key", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_move_in_stores_the_file_and_removes_it_locally(store, tmp_path, monkeypatch):
    """prepare's shards (`Store.move_in`): both back ends store the bytes and delete the local file; a folder store
    renames it (the same inode: no copy) and, across filesystems (EXDEV), copies it through a temporary name."""
    local = tmp_path / "shard.tfrecord"
    local.write_bytes(b"a" * 1000)
    inode = local.stat().st_ino
    store.move_in("data/t/one.tfrecord", local)
    assert not local.exists() and store.get_bytes("data/t/one.tfrecord") == b"a" * 1000
    if isinstance(store, FileStore):
        assert (store.root / "data/t/one.tfrecord").stat().st_ino == inode
        replace = os.replace

        def across(src, dst):  # the shard's own rename fails as between two filesystems; the copy's works
            if str(src) == str(local):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return replace(src, dst)

        monkeypatch.setattr(os, "replace", across)
        local.write_bytes(b"b" * 10)
        store.move_in("data/t/two.tfrecord", local)
        assert not local.exists() and store.get_bytes("data/t/two.tfrecord") == b"b" * 10
        assert store.list("data/t") == ["data/t/one.tfrecord", "data/t/two.tfrecord"]


def test_list_is_recursive_sorted_and_prefix_scoped(store):
    for key in ["p/z.txt", "p/a/1.txt", "p/a/2.txt", "pq/other.txt", "top.txt"]:
        store.put_text(key, key)
    assert store.list("p") == ["p/a/1.txt", "p/a/2.txt", "p/z.txt"]  # not pq/
    assert store.list("p/a") == ["p/a/1.txt", "p/a/2.txt"]
    assert store.list("missing") == []
    assert "top.txt" in store.list("")


def test_delete_prefix(store):
    for key in ["gone/a.txt", "gone/b/c.txt", "gone2/keep.txt"]:
        store.put_text(key, "x")
    store.delete_prefix("gone")
    assert store.list("gone") == []
    assert store.list("gone2") == ["gone2/keep.txt"]
    store.delete_prefix("never-existed")  # no error


def test_upload_download_files_and_dirs(store, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "one.bin").write_bytes(os.urandom(3000))
    (src / "sub" / "two.txt").write_text("two")
    store.upload("single/one.bin", src / "one.bin")
    store.download("single/one.bin", tmp_path / "deep" / "er" / "one.bin")
    assert (tmp_path / "deep" / "er" / "one.bin").read_bytes() == (src / "one.bin").read_bytes()
    for name in ("one.bin", "sub/two.txt"):
        store.upload(f"tree/{name}", src / name)
    assert store.list("tree") == ["tree/one.bin", "tree/sub/two.txt"]
    out = tmp_path / "out"
    for key in store.list("tree"):
        store.download(key, out / key.removeprefix("tree/"))
    assert (out / "sub" / "two.txt").read_text() == "two"
    assert (out / "one.bin").read_bytes() == (src / "one.bin").read_bytes()
    assert not list(out.rglob("*.part"))


def test_success_marker_semantics(store):
    assert store.is_complete("job") is None
    store.put_text("job/result.txt", "done")
    assert store.is_complete("job") is None  # results without the marker never count
    store.mark_complete("job", {"fingerprint": "abc"})
    assert store.is_complete("job") == {"fingerprint": "abc"}
    assert store.list("job") == ["job/_SUCCESS", "job/result.txt"]
    store.mark_complete("empty")
    assert store.is_complete("empty") == {}
    store.delete_prefix("job")
    assert store.is_complete("job") is None


def test_s3_missing_bucket_is_bad_input(s3_env):
    missing = open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")
    with pytest.raises(BadInput, match="does not exist"):
        missing.put_text("a.txt", "x")
    with pytest.raises(BadInput, match="does not exist"):
        missing.list("")


def test_s3_prefix_isolation(s3_env):
    bucket = s3_env[len("s3://"):].split("/")[0]
    a, b = open_store(f"s3://{bucket}/one"), open_store(f"s3://{bucket}/two")
    a.put_text("k.txt", "a")
    b.put_text("k.txt", "b")
    assert a.get_text("k.txt") == "a" and b.list("") == ["k.txt"]
    assert open_store(f"s3://{bucket}").list("one") == ["one/k.txt"]


def test_file_store_writes_are_atomic(tmp_path):
    store = FileStore(str(tmp_path / "s"))
    store.put_bytes("x/data.bin", b"old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):  # a writer that dies half way leaves the old file and no temporary file
        with store._atomic("x/data.bin") as f:
            f.write(b"half of the new")
            raise Boom
    assert store.get_bytes("x/data.bin") == b"old"
    assert sorted(p.name for p in (tmp_path / "s" / "x").iterdir()) == ["data.bin"]
    # An in-flight temporary file is never listed as a key.
    (tmp_path / "s" / "x" / ".tmp-data.bin123").write_bytes(b"partial")
    assert store.list("x") == ["x/data.bin"]


def test_file_store_rejects_keys_outside_root(tmp_path):
    store = FileStore(str(tmp_path / "s"))
    with pytest.raises(BadInput, match="escapes"):
        store.put_text("../outside.txt", "x")
    assert not (tmp_path / "outside.txt").exists()
