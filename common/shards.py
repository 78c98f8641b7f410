"""Prepared tensors as TFRecord shards: `prepare` writes them shard by shard, a variant streams them (issue 21).

Nothing here holds a whole split: `prepare` decodes a bounded window of photos at a time into the current shard,
and a variant reads its shards with tf.data. Layout under `<data>/tensors/<size>/`:

    <split>-00000.tfrecord ...  tf.train.Example records in labels.csv order: `image` (raw uint8 S*S*3 bytes),
                                `label` (int64 class index), `filename`, `box` (content box, 4 floats in 0..1)
    index.json                  format, size, classes; per split: images, per-class counts, and its shards
                                (file, images, per-class counts)
    _SUCCESS                    written last: fingerprint, size, fast, images per split, format

TFRecord, because TensorFlow (already the training dependency) reads it natively, in parallel and streamed;
records are uncompressed: uint8 pixels barely compress and a codec would cost CPU on every epoch. A shard holds
at most `shard_mb` of pixels (100 MB: big enough for sequential reads, small enough to download and shuffle).
"""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.config import Variant
from common.errors import BadInput
from common.store import Store, join

FORMAT = "tfrecord-v1"
SHARD_MB = 100
FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "filename": tf.io.FixedLenFeature([], tf.string),
    "box": tf.io.FixedLenFeature([4], tf.float32),
}


def example(image: np.ndarray, label: int, filename: str, box) -> bytes:
    """One photo as a serialised tf.train.Example (see FEATURES)."""
    feature = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "image": feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(image, np.uint8).tobytes()])),
        "label": feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "filename": feature(bytes_list=tf.train.BytesList(value=[filename.encode()])),
        "box": feature(float_list=tf.train.FloatList(value=[float(v) for v in box])),
    })).SerializeToString()


def parse(records: tf.Tensor, size: int) -> dict[str, tf.Tensor]:
    """A batch of serialised records -> images uint8 [B,S,S,3], labels int32 [B], filenames [B], boxes [B,4]."""
    f = tf.io.parse_example(records, FEATURES)
    images = tf.reshape(tf.io.decode_raw(f["image"], tf.uint8), [-1, size, size, 3])
    return {"images": images, "labels": tf.cast(f["label"], tf.int32), "filenames": f["filename"],
            "boxes": f["box"]}


def per_shard(size: int, shard_mb: float = SHARD_MB) -> int:
    """Photos per shard: `shard_mb` of uint8 pixels at this size, at least one."""
    return max(1, int(shard_mb * 1e6) // (size * size * 3))


class ShardWriter:
    """Writes one size's records split by split into shards of `per_shard` photos. Each finished shard is moved
    into the store by a background thread while the next one is written (a folder store renames it, S3 uploads
    it; `Store.move_in`), so writing never waits for storage and memory holds one record, local disk two shards
    at most. `finish` writes index.json, then `_SUCCESS`. Use it as a context manager: leaving waits for the
    shard still moving (an error mid-way must not leave a thread writing into a deleted folder)."""

    def __init__(self, store: Store, base: str, size: int, classes: list[str], workdir: Path,
                 shard_mb: float = SHARD_MB):
        self.store, self.base, self.size, self.classes, self.workdir = store, base, size, list(classes), workdir
        self.capacity = per_shard(size, shard_mb)
        workdir.mkdir(parents=True, exist_ok=True)
        self.splits: dict[str, dict] = {}
        self.writer: tf.io.TFRecordWriter | None = None
        self.current: dict | None = None
        self.split: str | None = None
        self.mover = ThreadPoolExecutor(1, thread_name_prefix="shard-mover")
        self.moving: Future | None = None  # the previous shard on its way into the store

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
            if kind is None:
                self._moved()
            elif self.moving is not None:
                self.moving.exception()  # wait; the error already on its way matters more than this one
        finally:
            self.mover.shutdown(wait=True)

    def add(self, split: str, image: np.ndarray, label: int, filename: str, box) -> None:
        if split != self.split or self.current["images"] == self.capacity:
            self._close_shard()
            self._open_shard(split)
        self.writer.write(example(image, label, filename, box))
        for counts in (self.current["classes"], self.splits[split]["classes"]):
            counts[self.classes[label]] += 1
        self.current["images"] += 1
        self.splits[split]["images"] += 1

    def _open_shard(self, split: str) -> None:
        entry = self.splits.setdefault(split, {"images": 0, "classes": dict.fromkeys(self.classes, 0), "shards": []})
        self.split = split
        self.current = {"file": f"{split}-{len(entry['shards']):05d}.tfrecord", "images": 0,
                        "classes": dict.fromkeys(self.classes, 0)}
        entry["shards"].append(self.current)
        self.writer = tf.io.TFRecordWriter(str(self.workdir / self.current["file"]))

    def _close_shard(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        local = self.workdir / self.current["file"]
        self.current["bytes"] = local.stat().st_size
        self._moved()  # one shard in flight at most: local disk stays bounded
        self.moving = self.mover.submit(self.store.move_in, join(self.base, self.current["file"]), local)

    def _moved(self) -> None:
        """Wait for the shard on its way into the store; its error (store full, network) is raised here."""
        moving, self.moving = self.moving, None
        if moving is not None:
            moving.result()

    def finish(self, splits: tuple[str, ...], marker: dict) -> dict:
        """Close the last shard, write index.json, then `_SUCCESS` (with `marker` and the images per split)."""
        self._close_shard()
        self._moved()
        self.mover.shutdown()
        for split in splits:  # an empty split still has an entry: a reader then finds no shards, not a KeyError
            self.splits.setdefault(split, {"images": 0, "classes": dict.fromkeys(self.classes, 0), "shards": []})
        index = {"format": FORMAT, "size": self.size, "classes": self.classes,
                 "splits": {s: self.splits[s] for s in splits}}
        self.store.put_json(join(self.base, "index.json"), index)
        self.store.mark_complete(self.base, {**marker, "format": FORMAT, "size": self.size,
                                             "images": {s: self.splits[s]["images"] for s in splits}})
        return index


def is_current(marker: dict | None) -> bool:
    """A `tensors/<size>/_SUCCESS` of this layout (an older store has one `<split>.npz` per split)."""
    return bool(marker) and marker.get("format") == FORMAT


def read_index(store: Store, base: str) -> dict:
    """index.json of a finished size; BadInput with the fix for a store prepared before the shards."""
    marker = store.is_complete(base)
    if marker is None:
        raise BadInput(f"{store.url(base)} is not prepared: rerun `aquarium prepare` with this sweep's --config "
                       "(it materialises every image size the sweep needs)")
    if not is_current(marker):
        raise BadInput(f"{store.url(base)} holds tensors of an older layout (one .npz per split): rerun "
                       "`aquarium prepare --force` (same zip) to write them as shards")
    return store.get_json(join(base, "index.json"))


def local_shards(store: Store, base: str, index: dict, split: str, folder: Path) -> list[str]:
    """The split's shard files on local disk, in order: a folder store's own files, or an S3 store's downloaded
    once into `folder` (a pod's /tmp emptyDir: size it above the tensors of the variant's size)."""
    root = getattr(store, "root", None)
    if root is not None:
        return [str(Path(root) / base / s["file"]) for s in index["splits"][split]["shards"]]
    paths = []
    for shard in index["splits"][split]["shards"]:
        path = folder / shard["file"]
        if not path.is_file() or path.stat().st_size != shard.get("bytes", -1):
            store.download(join(base, shard["file"]), path)
        paths.append(str(path))
    return paths


def records(paths: list[str], size: int, batch_size: int) -> tf.data.Dataset:
    """The split's records in order (evaluation, or loading into memory), parsed in batches."""
    ds = tf.data.TFRecordDataset(tf.constant(paths, tf.string))
    return ds.batch(batch_size).map(lambda r: parse(r, size), num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=True).prefetch(tf.data.AUTOTUNE)


def load_arrays(paths: list[str], size: int) -> dict[str, np.ndarray]:
    """A whole split as numpy arrays (images, labels, filenames as str, boxes): for splits that fit in memory."""
    parts = [{k: v.numpy() for k, v in batch.items()} for batch in records(paths, size, 256)] if paths else []
    if not parts:
        return {"images": np.zeros((0, size, size, 3), np.uint8), "labels": np.zeros((0,), np.int32),
                "filenames": np.zeros((0,), str), "boxes": np.zeros((0, 4), np.float32)}
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["filenames"] = out["filenames"].astype(str)
    return out


def split_mb(index: dict, split: str) -> float:
    """Pixel megabytes of a split at the index's size: what holding it in memory costs."""
    return index["splits"][split]["images"] * index["size"] ** 2 * 3 / 1e6


def streamed_training(paths: list[str], count: int, variant: Variant, first_epoch: int = 0,
                      boxes: bool = False) -> tf.data.Dataset:
    """Training batches streamed from the shards, for splits too big for memory (`variant.cache_mb`).

    Epochs `first_epoch`..`variant.epochs - 1` as one stream; each epoch reads the shards in an order shuffled
    by (seed, epoch), interleaved four at a time, through a shuffle buffer of `variant.shuffle_buffer` photos
    seeded by (seed, epoch) too (and TensorFlow's global seed, which training sets to the variant's seed) -- so a
    resumed run sees exactly the batches of the uninterrupted one, and memory holds the buffer, not the split. Batches as `pipeline.input_pipeline`'s: uint8 images (with content boxes
    when `boxes`), int32 labels; `batches_per_epoch` of them per epoch.
    """
    from common.pipeline import batches_per_epoch

    size, batches = variant.image_size, batches_per_epoch(count, variant)
    readers = max(1, min(4, len(paths)))  # shards read at once, interleaved record by record

    def one_epoch(epoch: int) -> tf.data.Dataset:
        rng = np.random.default_rng([variant.seed, epoch])  # the shard order and the buffer's seed of this epoch
        order = [paths[i] for i in rng.permutation(len(paths))]
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(order, tf.string)).interleave(
            tf.data.TFRecordDataset, cycle_length=readers, block_length=1, num_parallel_calls=readers,
            deterministic=True)
        ds = ds.shuffle(variant.shuffle_buffer, seed=int(rng.integers(2 ** 31 - 1)), reshuffle_each_iteration=False)
        return ds.batch(variant.batch_size).take(batches)

    # One dataset per epoch, chained: Python ints as seeds (tf.data's shuffle takes no per-epoch tensor seed once
    # a global seed is set, as training sets it); the global seed is the variant's in a run and its resume alike
    epochs = [one_epoch(e) for e in range(first_epoch, variant.epochs)]
    ds = functools.reduce(tf.data.Dataset.concatenate, epochs) if epochs else tf.data.Dataset.from_tensor_slices(
        tf.zeros([0], tf.string)).batch(variant.batch_size)
    ds = ds.map(lambda r: parse(r, size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if boxes:
        return ds.map(lambda b: ((b["images"], b["boxes"]), b["labels"])).prefetch(tf.data.AUTOTUNE)
    return ds.map(lambda b: (b["images"], b["labels"])).prefetch(tf.data.AUTOTUNE)


def read_split(store: Store, base: str, split: str, folder: Path) -> dict[str, np.ndarray]:
    """One stored split as numpy arrays (tests, benchmarks and small tools)."""
    index = read_index(store, base)
    return load_arrays(local_shards(store, base, index, split, folder), index["size"])

