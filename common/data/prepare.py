"""`prepare`: the zip in, the store layout of README.md out -- images, labels, counts, fingerprint, tensors.

The order of writes is the contract: everything under `<prefix>/` first, each `tensors/<size>/_SUCCESS` after
its split files, and `<prefix>/_SUCCESS` last, so a crash anywhere leaves a prefix no reader trusts.

Memory does not grow with the number of photos: photos stay on disk (the unpacked zip, or the store), only
their sha256 is held, and tensors are decoded a few batches at a time straight into TFRecord shards
(`common.shards`), each shard moved into the store while the next is written.

Reruns are cheap. The `_SUCCESS` record holds the zip's sha256, the synthesize flag, the fingerprint and the
sizes; when they match, nothing is written ("already prepared"), and a newly requested size is materialised
from the images already in the store. A *different* complete dataset is never overwritten without `force`.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import hashlib
import io
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse, urlunparse

from common import lease, table
from common.config import Sweep
from common.data import SPLITS, formats, labels, source as src
from common.errors import BadInput
from common.store import Store, join, open_store

LABEL_COLUMNS = ["split", "filename", "label", "score", "boxes", "sha256"]
DEFAULT_SIZES = (64, 224)


@dataclass
class Options:
    source: str
    store: str
    prefix: str = "data"
    sha256: str | None = None
    synthesize: bool = False
    sizes: tuple[int, ...] = DEFAULT_SIZES
    fast: bool = True  # DCT-domain downscaled decode (common.pipeline.decode_pad_resize)
    force: bool = False
    endpoint: str | None = None
    relative_to: Path | None = None  # where a relative source path may also be found (the spec's folder)
    max_bytes: int = src.MAX_UNPACKED_BYTES
    max_entries: int = src.MAX_ENTRIES
    shard_mb: float = 100  # pixels per tensor shard (common.shards.SHARD_MB)
    classes: tuple[str, ...] | None = None  # label order; None: the sorted classes of the training split
    format: str = "auto"  # tfcsv | coco | yolo | folders; auto: detected (common/data/formats.py)

    @classmethod
    def from_sweep(cls, sweep: Sweep, **settings) -> "Options":
        """The options of a resolved sweep (`config.resolve`): its dataset, store, endpoint and variant sizes."""
        d = sweep.dataset
        return cls(**{"source": d.source, "store": sweep.store, "prefix": d.prefix, "sha256": d.sha256,
                      "synthesize": d.synthesize, "endpoint": sweep.endpoint, "sizes": tuple(sweep.image_sizes),
                      "classes": tuple(d.classes) if d.classes else None, "format": d.format, **settings})

    @property
    def requested(self) -> dict:
        """What the user asked of the labelling beyond the zip: a store prepared with other settings is re-read."""
        return {"classes": list(self.classes) if self.classes else None, "format": self.format}


def _log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class _Job:
    """One prepare run: its options, the store and what the prefix already holds (`_SUCCESS`, or None)."""

    opts: Options
    store: Store
    prefix: str
    sizes: tuple[int, ...]
    done: dict | None
    log: Callable[[str], None]
    lease: lease.Lease | None = None  # held while writing (`_one_writer`)
    t0: float = field(default_factory=time.monotonic)

    def same_zip(self, sha: str | None) -> bool:
        """The prefix already holds this very zip (same sha256 and synthesize flag) and --force is not set."""
        done = self.done
        return bool(done and not self.opts.force and sha and done.get("zip_sha256") == sha.strip().lower()
                    and done.get("synthesize") == self.opts.synthesize
                    and done.get("requested", self.opts.requested) == self.opts.requested)


def prepare(opts: Options, log=_log) -> dict:
    """Fetch, validate, label and write the dataset; returns the summary (see `summary_text`)."""
    sizes = tuple(sorted(set(opts.sizes)))
    if not sizes or min(sizes) < 8:
        raise BadInput(f"image sizes {list(opts.sizes)}: give sizes of at least 8 px, e.g. --image-sizes 64,224")
    store = open_store(opts.store, opts.endpoint)
    prefix = opts.prefix.strip("/")
    job = _Job(opts, store, prefix, sizes, store.is_complete(prefix), log)
    # Already prepared: the expected sha256 is enough, no download at all
    if job.same_zip(opts.sha256):
        return _one_writer(job, _complete_existing)
    # Fetch, check and label the zip
    with tempfile.TemporaryDirectory(prefix="aquarium-prepare-") as tmp:
        log(f"fetching {_safe_source(opts.source)}")
        zip_path = src.fetch(opts.source, Path(tmp), opts.relative_to, opts.endpoint)
        sha = src.verify_sha256(zip_path, opts.sha256, opts.source)
        if job.same_zip(sha):
            return _one_writer(job, _complete_existing)
        items, skipped, classes, fmt = _read_zip(zip_path, Path(tmp), opts, log)
        # Synthesize, then fingerprint what a model trains on
        synthetic = _synthesized(items, classes, opts.synthesize, Path(tmp) / "synthesized", log)
        items = _ordered(items + synthetic)
        labels_csv = _labels_csv(items)
        fingerprint = _fingerprint(labels_csv, classes, opts.synthesize)
        record = {"fingerprint": fingerprint, "source": _safe_source(opts.source), "zip_sha256": sha,
                  "synthesize": opts.synthesize, "synthesized": len(synthetic), "skipped": len(skipped),
                  "classes": list(classes), "format": fmt}
        # The photos are read from the unpacked zip while writing: the folder lives until then
        return _one_writer(job, lambda j: _write(j, items, labels_csv, skipped, record))


def _one_writer(job: _Job, work) -> dict:
    """Run prepare's writes as the dataset's only writer (`common.lease`). A second prepare validates the zip,
    waits here, then sees what the first one wrote (the store is read again) and only adds what is missing."""
    with lease.held(job.store, job.prefix, f"dataset {job.store.url(job.prefix)}") as held:
        job.lease, job.done = held, job.store.is_complete(job.prefix)
        return work(job)


def _write(job: _Job, items, labels_csv: str, skipped, record: dict) -> dict:
    """Write the validated dataset -- unless it is already there -- images and tables, tensors, `_SUCCESS` last."""
    store, prefix, sizes = job.store, job.prefix, job.sizes
    # Never replace a different dataset without --force
    if job.done and not job.opts.force:
        if job.done.get("fingerprint") == record["fingerprint"]:
            return _complete_existing(job)
        raise BadInput(_different(job, record["zip_sha256"]))
    record = _write_dataset(job, items, labels_csv, skipped, record)
    _write_tensors(job, items, sizes, record["fingerprint"], record["classes"], _photo)
    job.lease.check()
    store.mark_complete(prefix, {"fingerprint": record["fingerprint"], "sizes": list(sizes),
                                 "zip_sha256": record["zip_sha256"], "synthesize": job.opts.synthesize,
                                 "source": record["source"], "requested": job.opts.requested})
    return _summary("prepared", job, record, sizes, sizes)


def _read_zip(zip_path: Path, tmp: Path, opts: Options, log) -> tuple[list, list, tuple[str, ...], str]:
    """Unpack the untrusted zip, read its format, decide the classes, validate and label every split;
    returns (labelled items, skipped, classes in label order, format). Items keep the path of their unpacked
    photo and its sha256, not its bytes."""
    unpacked = src.safe_extract(zip_path, tmp / "unpacked", opts.source, opts.max_bytes, opts.max_entries)
    root = formats.dataset_root(unpacked, opts.source)
    folders = formats.split_folders(root, opts.source)
    fmt = formats.detect(root, folders, opts.source) if opts.format == "auto" else opts.format
    splits = formats.read(fmt, root, folders)
    classes = labels.resolve_classes(splits["train"], opts.classes)
    log(f"  format {fmt}{' (detected)' if opts.format == 'auto' else ''}; classes {', '.join(classes)}")
    items, skipped = [], []
    for split in SPLITS:
        got, skip = labels.label_split(splits[split], classes)
        items += got
        skipped += skip
        log(f"  {split}: {len(got)} labelled images, {len(skip)} without a label")
    labels.check_trained(items, classes, given=bool(opts.classes))
    with ThreadPoolExecutor(4) as pool:
        for item, digest in zip(items, pool.map(lambda i: src.sha256_file(i.path), items)):
            item.digest = digest
    return items, skipped, classes, fmt


def _photo(item) -> bytes:
    """A photo's bytes, read when they are needed (items hold a path, not the bytes)."""
    return item.jpeg or item.path.read_bytes()


def _synthesized(items, classes, synthesize: bool, folder: Path, log) -> list:
    """The synthetic train photos, each written to `folder` as it is made (items hold paths, not bytes)."""
    if not synthesize:
        return []
    common = labels.most_frequent(items, classes)
    folder.mkdir(parents=True, exist_ok=True)
    synthetic = []
    for item in (i for i in items if i.split == "train"):
        made = labels.synthesize(replace(item, jpeg=_photo(item), digest=""), classes, common)
        if made is not None:
            made.path, made.digest = folder / made.filename, made.sha256
            made.path.write_bytes(made.jpeg)
            made.jpeg = b""
            synthetic.append(made)
    log(f"  synthesized {len(synthetic)} train images (dominant class painted away)")
    return synthetic


def _different(job: _Job, sha: str) -> str:
    done, opts = job.done, job.opts
    return (f"{job.store.url(job.prefix)} already holds a different prepared dataset (from {done.get('source')}, "
            f"zip sha256 {str(done.get('zip_sha256'))[:12]}, synthesize {done.get('synthesize')}, classes "
            f"{_classes_text(done.get('requested'))}; this one: zip sha256 {sha[:12]}, synthesize {opts.synthesize}, "
            f"classes {_classes_text(opts.requested)}): pass --force to replace it, or use another "
            "--store or dataset.prefix")


def _classes_text(requested: dict | None) -> str:
    classes = (requested or {}).get("classes")
    return ",".join(classes) if classes else "from the data"


def _write_dataset(job: _Job, items, labels_csv: str, skipped, record: dict) -> dict:
    """Images, labels.csv, skipped.csv, classes, counts and fingerprint.json (the dataset's record)."""
    store, prefix = job.store, job.prefix
    counts = _counts(items, record["classes"])
    store.delete_prefix(prefix)  # leftovers of an unfinished run or the dataset being replaced
    job.log(f"writing {len(items)} images to {store.url(prefix)}")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put_bytes(join(prefix, "images", i.split, i.label, i.filename), _photo(i)),
                      items))
    store.put_text(join(prefix, "labels.csv"), labels_csv)
    store.put_text(join(prefix, "skipped.csv"), _csv(["split", "filename", "reason"], skipped))
    store.put_json(join(prefix, "classes.json"), record["classes"])
    store.put_json(join(prefix, "counts.json"), counts)
    record = {**record, "images": {s: sum(counts[s].values()) for s in SPLITS}, "counts": counts}
    store.put_json(join(prefix, "fingerprint.json"), record)
    return record


def _complete_existing(job: _Job) -> dict:
    """The dataset is already in the store: materialise only the sizes it lacks -- or holds in the older layout
    of one .npz per split -- from the stored images."""
    from common.shards import is_current

    store, prefix, done = job.store, job.prefix, job.done
    have = set(done.get("sizes", []))
    missing = [s for s in job.sizes
               if s not in have or not is_current(store.is_complete(join(prefix, "tensors", str(s))))]
    record = store.get_json(join(prefix, "fingerprint.json"))
    if not missing:
        job.log(f"already prepared: {store.url(prefix)} (fingerprint {done['fingerprint']}, sizes {sorted(have)})")
        return _summary("already prepared", job, record, sorted(have), [])
    job.log(f"dataset already in {store.url(prefix)}; materialising missing sizes {missing}")
    items = [labels.Labelled(r["split"], r["filename"], r["label"], float(r["score"]), [])
             for r in csv.DictReader(io.StringIO(store.get_text(join(prefix, "labels.csv"))))]
    classes = store.get_json(join(prefix, "classes.json"))
    _write_tensors(job, items, tuple(missing), done["fingerprint"], classes,
                   lambda i: store.get_bytes(join(prefix, "images", i.split, i.label, i.filename)))
    all_sizes = sorted(have | set(missing))
    store.mark_complete(prefix, {**done, "sizes": all_sizes})
    return _summary("added sizes", job, record, all_sizes, missing)


def _write_tensors(job: _Job, items, sizes: tuple[int, ...], fingerprint: str, classes: list[str],
                   photo: Callable) -> None:
    """tensors/<size>/ of every size as TFRecord shards through common.pipeline (the one definition of
    decode/pad/resize), in one pass over the photos: each is read once -- by tf.data from its file, or from a
    store by `photo(item)`, a few ahead -- decoded at each size in parallel, and written a batch at a time to
    one ShardWriter per size, so memory holds a few batches and a shard per size whatever the number of photos.
    Each size's index.json, then its `_SUCCESS`, last."""
    from common.pipeline import materialise  # TensorFlow: only when there is work
    from common.shards import ShardWriter

    t = time.monotonic()
    store, fast, items = job.store, job.opts.fast, _ordered(items)
    bases = {s: join(job.prefix, "tensors", str(s)) for s in sizes}
    for base in bases.values():
        store.delete_prefix(base)  # an unfinished run's shards, or the older layout's .npz files
    on_disk = all(i.path is not None and not i.jpeg for i in items)  # tf.data reads the files itself: faster
    photos = [str(i.path) for i in items] if on_disk else _read_ahead(photo, items)
    with tempfile.TemporaryDirectory(prefix="aquarium-shards-") as tmp, contextlib.ExitStack() as writing:
        writers = {s: writing.enter_context(ShardWriter(store, bases[s], s, classes, Path(tmp, str(s)),
                                                        job.opts.shard_mb)) for s in sizes}
        done = 0
        for ids, per_size in materialise(photos, [i.label for i in items], sizes, fast, classes=classes):
            if (ids < 0).any():
                raise BadInput(f"{store.url(join(job.prefix, 'labels.csv'))} has a label outside {classes}: "
                               "rerun prepare with --force")
            batch = items[done:done + len(ids)]
            for size, (images, boxes) in per_size.items():
                for image, label, box, item in zip(images, ids, boxes, batch):
                    writers[size].add(item.split, image, int(label), item.filename, box)
            done += len(ids)
        indexes = {s: w.finish(SPLITS, {"fingerprint": fingerprint, "fast": fast}) for s, w in writers.items()}
    for size, index in indexes.items():
        shards = sum(len(index["splits"][s]["shards"]) for s in SPLITS)
        job.log(f"  tensors {size} px: {({s: index['splits'][s]['images'] for s in SPLITS})} in {shards} shards")
    job.log(f"  tensors at {', '.join(map(str, sizes))} px in one pass: {time.monotonic() - t:.1f} s "
            f"({'fast' if fast else 'full'} decode)")


def _read_ahead(photo: Callable, items, depth: int = 32):
    """Each item's bytes in order, read by 8 threads at most `depth` photos ahead (a store's latency overlaps)."""
    with ThreadPoolExecutor(8) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(photo, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _ordered(items):
    """Deterministic order: split order, then filename -- labels.csv and the tensors follow it."""
    return sorted(items, key=lambda i: (SPLITS.index(i.split), i.filename))


def _csv(header, rows) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _labels_csv(items) -> str:
    return _csv(LABEL_COLUMNS, [(i.split, i.filename, i.label, format(i.score, ".12g"), len(i.boxes), i.sha256)
                                for i in _ordered(items)])


def _fingerprint(labels_csv: str, classes, synthesize: bool) -> str:
    """sha256 of what a model trains on: every label and image hash, the class order, the synthesize flag.

    Not the export format: the same photos and labels from a COCO or a CSV export are the same training data."""
    blob = json.dumps({"labels.csv": labels_csv, "classes": list(classes), "synthesize": synthesize},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _counts(items, classes) -> dict:
    counts = {s: {c: 0 for c in classes} for s in SPLITS}
    for i in items:
        counts[i.split][i.label] += 1
    return counts


def _safe_source(source: str) -> str:
    """The source without credentials or query string (signed URLs), fit for logs and fingerprint.json."""
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https") and (parsed.query or "@" in parsed.netloc):
        return urlunparse(parsed._replace(netloc=parsed.netloc.rpartition("@")[2], query="", fragment=""))
    return source


def _summary(status: str, job: _Job, record: dict, sizes, materialised) -> dict:
    return {
        "status": status, "store": job.store.url(job.prefix), "fingerprint": record["fingerprint"],
        "images": record["images"], "skipped": record["skipped"], "synthesized": record["synthesized"],
        "counts": record["counts"], "sizes": list(sizes), "materialised": list(materialised),
        "seconds": round(time.monotonic() - job.t0, 2),
    }


def summary_text(summary: dict) -> str:
    """The job's closing report: images per split, class counts table, skipped, synthesized, time."""
    counts = summary["counts"]
    rows = [{"class": c, **{s: counts[s][c] for s in SPLITS}} for c in counts["train"]]  # label order
    rows.append({"class": "images", **{s: summary["images"][s] for s in SPLITS}})
    return "\n".join([
        f"{summary['status']}: {summary['store']}  (fingerprint {summary['fingerprint'][:12]}, "
        f"sizes {summary['sizes']}, {summary['seconds']:.1f} s)",
        table.render(rows, right=SPLITS),
        f"skipped (no boxes): {summary['skipped']}   synthesized: {summary['synthesized']}"])
