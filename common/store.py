"""The object store: the only way pods exchange artefacts.

Two back ends behind one small interface:
  s3://bucket/prefix  boto3 (MinIO locally, S3 in the cloud). The endpoint is decided once, by `s3_endpoint`
                      (--endpoint, then AWS_ENDPOINT_URL, then the spec's `endpoint:`); credentials come from
                      the standard AWS chain only.
                      Transfers use boto3's managed (multipart, threaded) transfer manager; retries use
                      botocore's `standard` retry mode -- no hand-written loops.
  file:///dir         a local folder, the embedded default for one machine. A bare path works too.

Keys are '/'-separated and relative to the store root. Every writer puts `_SUCCESS` last (`mark_complete`);
readers check `is_complete` before trusting a prefix, so a half-written result never counts.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from common.errors import AquariumError, BadInput, TransientError, from_os_error

SUCCESS = "_SUCCESS"


def s3_endpoint(cli: str | None = None, spec: str | None = None, env=None) -> str | None:
    """The S3 endpoint, in the AWS SDKs' order: `--endpoint` on the command line, then the environment
    (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL), then the spec's `endpoint:`; None means AWS itself.

    The one place this precedence is written down: `config.resolve` applies it once at the command line's edge
    and everything after reads `sweep.endpoint`. The environment beats the spec so that one spec serves both a
    laptop (port-forwarded MinIO) and a cluster, as with every AWS tool."""
    env = os.environ if env is None else env
    for value in (cli, env.get("AWS_ENDPOINT_URL_S3"), env.get("AWS_ENDPOINT_URL"), spec):
        if value:
            return value
    return None


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); either part may be empty (callers say what is missing)."""
    bucket, _, key = str(uri).removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def fetch_object(uri: str, folder: Path, endpoint: str | None = None) -> Path:
    """Download the single object `s3://bucket/key` into folder under its own name; KeyError when it is missing."""
    bucket, key = split_s3(uri)
    dest = Path(folder) / (PurePosixPath(key).name or "object")
    open_store(f"s3://{bucket}", endpoint).download(key, dest)
    return dest


def open_store(uri: str, endpoint: str | None = None) -> "Store":
    """Open `s3://bucket/prefix`, `file:///dir` or a plain directory path. `endpoint`: an already resolved
    `sweep.endpoint`; without one, boto3 reads AWS_ENDPOINT_URL itself."""
    uri = str(uri)
    if uri.startswith("s3://"):
        bucket, prefix = split_s3(uri)
        if not bucket:
            raise BadInput(f"store URI {uri!r} has no bucket: use s3://BUCKET/PREFIX")
        return S3Store(bucket, prefix, endpoint)
    if uri.startswith("file://"):
        return FileStore(uri[len("file://"):])
    if "://" in uri:
        raise BadInput(f"store URI {uri!r}: unsupported scheme; use s3://BUCKET/PREFIX or file:///DIR")
    return FileStore(uri)


def join(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Store:
    """What every job needs from storage. Subclasses implement the byte and file primitives."""

    uri: str
    endpoint: str | None = None  # the S3 endpoint it talks to (other objects of the same service use it too)

    def put_bytes(self, key: str, data: bytes) -> None: raise NotImplementedError
    def get_bytes(self, key: str) -> bytes: raise NotImplementedError  # KeyError if missing
    def upload(self, key: str, path: str | Path) -> None: raise NotImplementedError

    def move_in(self, key: str, path: str | Path) -> None:
        """`upload`, then delete the local file: for files written only to be stored (prepare's shards)."""
        self.upload(key, path)
        Path(path).unlink()

    def download(self, key: str, path: str | Path) -> None: raise NotImplementedError  # KeyError if missing
    def exists(self, key: str) -> bool: raise NotImplementedError
    def list(self, prefix: str) -> list[str]: raise NotImplementedError  # every key under prefix, sorted
    def delete(self, key: str) -> None: raise NotImplementedError  # no error if missing
    def delete_prefix(self, prefix: str) -> None: raise NotImplementedError
    def create_exclusive(self, key: str, data: bytes) -> bool: raise NotImplementedError  # False: it exists

    def url(self, key: str) -> str:
        return f"{self.uri}/{key.strip('/')}" if key else self.uri

    def put_text(self, key: str, text: str) -> None:
        self.put_bytes(key, text.encode())

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()

    def put_json(self, key: str, obj) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def get_json(self, key: str):
        return json.loads(self.get_bytes(key))

    def mark_complete(self, prefix: str, info: dict | None = None) -> None:
        """Write `<prefix>/_SUCCESS` -- call it only after everything else under prefix is written."""
        self.put_json(join(prefix, SUCCESS), info or {})

    def is_complete(self, prefix: str) -> dict | None:
        """The `_SUCCESS` record of prefix, or None when the prefix is missing or unfinished."""
        try:
            return self.get_json(join(prefix, SUCCESS))
        except KeyError:
            return None


class FileStore(Store):
    """A local folder. Writes go to a temporary file renamed into place, so a crash never leaves half a file."""

    def __init__(self, root: str):
        self.root = Path(root).expanduser().resolve()
        self.uri = "file://" + self.root.as_posix()

    @contextlib.contextmanager
    def _os_errors(self):
        """Every OSError of the folder (a file in the way, no permission, read-only, disk full) as one line
        naming the store and the fix, exit 2 or 75 (`errors.from_os_error`) -- never a traceback."""
        try:
            yield
        except OSError as e:
            raise from_os_error(e, f"store {self.uri}", "point --store (or store:) at a writable folder") from None

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise BadInput(f"store key {key!r} escapes the store root {self.root}")
        return path

    @contextlib.contextmanager
    def _atomic(self, key: str):
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-" + path.name)
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only; store files are meant to be shared and served
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_bytes(self, key, data):
        with self._os_errors(), self._atomic(key) as f:
            f.write(data)

    def create_exclusive(self, key, data):
        """Write key only if it does not exist, atomically: a hard link of a finished temporary file fails when
        the name is taken (O_EXCL semantics, and no reader ever sees half the content)."""
        with self._os_errors():
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-" + path.name)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)

    def get_bytes(self, key):
        try:
            with self._os_errors():
                return self._path(key).read_bytes()
        except AquariumError:
            if self.exists(key):
                raise
            raise KeyError(self.url(key)) from None

    def upload(self, key, path):
        with self._os_errors(), self._atomic(key) as f, open(path, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    def move_in(self, key, path):
        """A rename when the file is on the store's filesystem: a shard is never copied (a copy otherwise)."""
        with self._os_errors():
            target = self._path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o644)
            try:
                return os.replace(path, target)  # atomic: readers see the whole file or none
            except OSError as e:
                if e.errno != errno.EXDEV:
                    raise
        super().move_in(key, path)

    def download(self, key, path):
        src = self._path(key)
        if not src.is_file():
            raise KeyError(self.url(key))
        with self._os_errors():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)

    def exists(self, key):
        return self._path(key).is_file()

    def list(self, prefix):
        base = self._path(prefix)
        if not base.is_dir():
            return []
        with self._os_errors():
            return sorted(
                p.relative_to(self.root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(".tmp-")
            )

    def delete(self, key):
        with self._os_errors(), contextlib.suppress(NotADirectoryError):  # a file in the way: nothing to delete
            self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix):
        shutil.rmtree(self._path(prefix), ignore_errors=True)


def retry_config(env=None) -> dict:
    """botocore's `standard` retry mode with 10 attempts: exponential backoff with jitter, capped at 20 s per
    wait, so a store blip of up to about a minute never reaches the job; a longer outage ends the job with exit
    75 and the executor or the Job retries it from its checkpoint. (`adaptive` adds client-side rate limiting
    for throttling and is experimental in botocore; it does not help against an outage.) The standard
    AWS_RETRY_MODE and AWS_MAX_ATTEMPTS override it."""
    env = os.environ if env is None else env
    return {"mode": env.get("AWS_RETRY_MODE") or "standard", "max_attempts": int(env.get("AWS_MAX_ATTEMPTS") or 10)}


class S3Store(Store):
    """An S3 bucket prefix, through boto3's transfer manager and botocore's standard retry mode."""

    def __init__(self, bucket: str, prefix: str = "", endpoint: str | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self.endpoint = endpoint if endpoint else s3_endpoint()
        config = Config(retries=retry_config(), connect_timeout=10, read_timeout=120)
        self.client = boto3.client("s3", endpoint_url=self.endpoint, config=config)
        self.transfer = TransferConfig(multipart_threshold=32 << 20, multipart_chunksize=16 << 20, max_concurrency=8)

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    @contextlib.contextmanager
    def _errors(self, key: str):
        """Turn botocore's exceptions into the three cases a job acts on: missing, bad input, transient."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except NoCredentialsError:
            raise BadInput(
                f"no AWS credentials for {self.uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            ) from None
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(self.url(key)) from None
            if code == "NoSuchBucket":
                raise BadInput(f"bucket {self.bucket!r} does not exist at {self.uri}: create it first") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise BadInput(f"access denied to {self.url(key)} ({code}): check the S3 credentials") from None
            raise TransientError(f"S3 error on {self.url(key)}: {code} {e}") from None
        except BotoCoreError as e:
            raise TransientError(f"cannot reach the store at {self.uri}: {e}") from None

    def put_bytes(self, key, data):
        with self._errors(key):
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key), Config=self.transfer)

    def create_exclusive(self, key, data):
        """A conditional create (`If-None-Match: *`, honoured by AWS S3 and MinIO): exactly one creator wins."""
        from botocore.exceptions import ClientError

        with self._errors(key):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            except ClientError as e:  # 412: it exists; 409: another conditional write of it is in flight
                if str(e.response.get("Error", {}).get("Code")) in ("PreconditionFailed", "412",
                                                                    "ConditionalRequestConflict", "409"):
                    return False
                raise
        return True

    def get_bytes(self, key):
        buf = io.BytesIO()
        with self._errors(key):
            self.client.download_fileobj(self.bucket, self._key(key), buf, Config=self.transfer)
        return buf.getvalue()

    def upload(self, key, path):
        with self._errors(key):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)

    def download(self, key, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.part"
        with self._errors(key):
            self.client.download_file(self.bucket, self._key(key), tmp, Config=self.transfer)
        os.replace(tmp, path)

    def exists(self, key):
        try:
            with self._errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except KeyError:
            return False

    def list(self, prefix):
        root = join(self.prefix, prefix)
        root = root + "/" if root else ""
        keys = []
        with self._errors(prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
                keys += [obj["Key"] for obj in page.get("Contents", [])]
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[strip:] for k in keys)

    def delete(self, key):
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix):
        keys = self.list(prefix)
        with self._errors(prefix):
            for i in range(0, len(keys), 1000):
                objects = [{"Key": self._key(k)} for k in keys[i:i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
