"""Getting the dataset zip onto local disk, checking it, and unpacking it without trusting it.

A source is a local path, `file://` URL, `http(s)://` URL, `s3://bucket/key` or a Google Drive link / file id.
Remote sources are downloaded into a caller-owned temporary folder (the job never keeps a cache: pods are
ephemeral and the prepared store is the cache). The zip is untrusted input, so extraction refuses absolute
paths, `..` components and symlinks (zip-slip) and caps both the entry count and the bytes actually
decompressed (a zip bomb's headers can lie about sizes).
"""

from __future__ import annotations

import hashlib
import re
import stat
import sys
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from common.errors import BadInput, TransientError

MAX_UNPACKED_BYTES = 2 << 30  # 2 GiB: the real dataset unpacks to about 70 MB
MAX_ENTRIES = 20_000  # the real dataset has 646 entries
_CHUNK = 1 << 20
_GDRIVE_ID = re.compile(r"^[A-Za-z0-9_-]{25,}$")


def is_gdrive(source: str) -> bool:
    """A drive.google.com / docs.google.com link, or a bare Drive file id (long token that is not a path)."""
    host = urlparse(source).netloc.lower()
    if host in ("drive.google.com", "docs.google.com", "drive.usercontent.google.com"):
        return True
    return "://" not in source and bool(_GDRIVE_ID.match(source)) and not Path(source).exists()


def resolve_local(source: str, relative_to: Path | None = None) -> Path | None:
    """The local file a path or file:// source names (relative paths: cwd first, then `relative_to`)."""
    if source.startswith("file://"):
        return Path(unquote(urlparse(source).path))
    if "://" in source:
        return None
    path = Path(source).expanduser()
    if not path.exists() and relative_to is not None and not path.is_absolute():
        alt = relative_to / path
        if alt.exists():
            return alt
    return path


def fetch(source: str, workdir: Path, relative_to: Path | None = None, endpoint: str | None = None) -> Path:
    """Return a local path to the zip named by `source`, downloading into `workdir` when remote."""
    source = str(source).strip()
    if not source:
        raise BadInput("no dataset source: pass --source PATH|URL|s3://BUCKET/KEY|DRIVE-LINK or set dataset.source")
    if source.startswith("s3://"):
        return _fetch_s3(source, workdir, endpoint)
    if source.startswith(("http://", "https://")) and not is_gdrive(source):
        return _fetch_http(source, workdir)
    if is_gdrive(source):
        return _fetch_gdrive(source, workdir)
    path = resolve_local(source, relative_to)
    if path is None:
        raise BadInput(f"dataset source {source!r}: unsupported scheme; use a path, file://, https://, s3:// "
                       "or a Google Drive link")
    if not path.is_file():
        raise BadInput(f"dataset source {source!r} not found (looked for {path.resolve()}): pass --source (or "
                       "make sweep DATASET=) with a path, URL or Google Drive link of the dataset zip (a Roboflow "
                       "export; see README, Preparing the dataset and Bring your own dataset)")
    return path


def _fetch_http(url: str, workdir: Path) -> Path:
    """Stream an http(s) download to disk with a progress bar; 4xx is the user's problem, the rest transient."""
    import requests
    from tqdm import tqdm

    name = Path(unquote(urlparse(url).path)).name or "dataset.zip"
    dest = workdir / name
    try:
        with requests.get(url, stream=True, timeout=(10, 120)) as resp:
            if 400 <= resp.status_code < 500:
                raise BadInput(f"dataset source {url}: HTTP {resp.status_code} {resp.reason}: check the URL")
            resp.raise_for_status()
            total = int(resp.headers.get("Content-Length") or 0) or None
            with open(dest, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                             desc=f"download {name}", file=sys.stderr, mininterval=0.5) as bar:
                for chunk in resp.iter_content(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as e:
        raise TransientError(f"downloading {url} failed: {e}: check the network and retry") from None
    return dest


def _fetch_gdrive(source: str, workdir: Path) -> Path:
    """Google Drive through gdown (handles the large-file confirmation page); needs network access."""
    import gdown

    dest = workdir / "dataset.zip"
    try:
        if "://" in source:
            out = gdown.download(url=source, output=str(dest), quiet=False, fuzzy=True)
        else:
            out = gdown.download(id=source, output=str(dest), quiet=False)
    except gdown.exceptions.FileURLRetrievalError as e:
        raise BadInput(f"Google Drive source {source!r} cannot be downloaded: {e}: share it as "
                       "'anyone with the link' or pass a direct URL") from None
    except Exception as e:  # requests' network errors and gdown's own
        raise TransientError(f"downloading {source!r} from Google Drive failed: {e}") from None
    if not out or not dest.is_file():
        raise TransientError(f"downloading {source!r} from Google Drive produced no file: retry")
    return dest


def _fetch_s3(source: str, workdir: Path, endpoint: str | None) -> Path:
    from common.store import fetch_object, split_s3

    bucket, key = split_s3(source)
    if not bucket or not key:
        raise BadInput(f"dataset source {source!r}: use s3://BUCKET/KEY of the zip")
    try:
        return fetch_object(source, workdir, endpoint)
    except KeyError:
        raise BadInput(f"dataset source {source!r} does not exist: upload the zip there or fix --source") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, source: str) -> str:
    """The file's sha256; BadInput when `expected` is given and differs."""
    actual = sha256_file(path)
    if expected and expected.strip().lower() != actual:
        raise BadInput(f"dataset {source} has sha256 {actual}, expected {expected.strip().lower()}: the download "
                       "is corrupt or a different file; fix the source or the expected --sha256 / dataset.sha256")
    return actual


def _unsafe(name: str) -> str | None:
    """Why an entry name could write outside the extraction folder, or None when it is safe."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' path component"
    return None


def safe_extract(zip_path: Path, dest: Path, source: str, max_bytes: int = MAX_UNPACKED_BYTES,
                 max_entries: int = MAX_ENTRIES) -> Path:
    """Extract every regular file of the zip into `dest`, refusing anything that could escape it or blow up."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BadInput(f"dataset {source} is not a zip file ({e}): export the Roboflow dataset (e.g. as "
                       "'COCO JSON' or 'TensorFlow Object Detection CSV') and pass the downloaded .zip") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_entries:
            raise BadInput(f"dataset {source} has {len(infos)} zip entries, over the limit of {max_entries}: "
                           "is it the right file? (if it is, rerun `aquarium prepare` with --max-entries N)")
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise BadInput(f"dataset {source} unpacks to {declared} bytes, over the limit of {max_bytes}: "
                           "is it the right file? (if it is, rerun `aquarium prepare` with --max-unpacked-mb N)")
        for info in infos:
            why = _unsafe(info.filename)
            if why is None and stat.S_ISLNK(info.external_attr >> 16):
                why = "symbolic link"
            if why:
                raise BadInput(f"dataset {source}: zip entry {info.filename!r} is unsafe ({why}): refusing to "
                               "extract; re-export the dataset from Roboflow")
        written = 0
        root = dest.resolve()
        for info in infos:
            target = (root / info.filename).resolve()
            if root != target and root not in target.parents:  # belt and braces after _unsafe
                raise BadInput(f"dataset {source}: zip entry {info.filename!r} escapes the extraction folder")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise BadInput(f"dataset {source} unpacks to more than {max_bytes} bytes (its headers "
                                           "understate the sizes): refusing to extract a possible zip bomb")
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, ValueError) as e:
                raise BadInput(f"dataset {source}: zip entry {info.filename!r} is corrupt ({e}): download the "
                               "zip again") from None
    return dest

