"""One writer per variant and per prepared dataset: a lease object in the store.

Two `sweep run`s of one spec on one store, a laptop next to a cluster sweep, or an old pod still checkpointing
beside its replacement would otherwise all write the same prefix. Whoever writes a prefix first takes its lease,
`_leases/<prefix>.json`, with a conditional create -- S3 `If-None-Match: *` (AWS S3, MinIO), an atomic
hard link for file:// -- so exactly one creator wins. A background thread renews it every ttl/3; the holder
deletes it when done. A holder that dies stops renewing: a waiter that sees the lease unchanged for `ttl`
seconds *of its own clock* (no trust in other machines' clocks) takes it over, and the work resumes from the
checkpoint. The waiter prints one line naming the holder, waits, then finds the result finished and skips, or
takes over and resumes -- it never reports success without the result.

A holder that finds its lease taken over (it could not renew during a long outage) stops before its next
commit point (`check`), so two writers never both commit. Retries of one logical writer -- the local executor
restarting a job after exit 75 -- share an owner (AQUARIUM_LEASE_OWNER) and take their own lease back at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from common.errors import AquariumError, TransientError
from common.store import Store, join

log = logging.getLogger("aquarium.lease")

TTL_ENV = "AQUARIUM_LEASE_TTL"  # seconds a lease lives without renewal (tests shorten it)
OWNER_ENV = "AQUARIUM_LEASE_OWNER"  # one logical writer across its retries (the local executor sets it)
DEFAULT_TTL_S = 60.0


def lease_key(prefix: str) -> str:
    """Outside the prefix it guards, so `--force` or prepare clearing the prefix never deletes it."""
    return join("_leases", prefix.strip("/") + ".json")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Lease:
    store: Store
    key: str
    what: str
    record: dict
    lost: str = ""

    def check(self) -> None:
        """Call before a commit point (`_SUCCESS`, a checkpoint's state.json): stop if another writer took over."""
        if self.lost:
            raise TransientError(f"{self.what}: {self.lost}; this run stops without writing more")


def _new_record(ttl: float) -> dict:
    host, pid, token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
    return {"owner": os.environ.get(OWNER_ENV) or f"{host}:{pid}:{token[:8]}", "host": host, "pid": pid,
            "pidns": _pid_namespace(), "token": token, "ttl": ttl, "renewals": 0,
            "taken_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _dead_here(record: dict) -> bool:
    """The holder ran on this very machine and PID namespace, and its process is gone (SIGKILL, crash): no need
    to wait out the TTL. (A container with the host's name has its own PID namespace, so it never matches.)"""
    if record.get("host") != socket.gethostname() or not record.get("pidns") or record["pidns"] != _pid_namespace():
        return False
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, TypeError):
        return False
    return False


def holder(record: dict) -> str:
    return f"{record.get('owner')} (pid {record.get('pid')} on {record.get('host')}, since {record.get('taken_at')})"


def _read(store: Store, key: str) -> dict | None:
    try:
        return store.get_json(key)
    except (KeyError, ValueError):  # released meanwhile, or caught half-written on a file system
        return None


def acquire(store: Store, prefix: str, what: str, say=_say, ttl: float | None = None) -> Lease:
    """Take the lease of prefix, waiting while a live holder renews it; take over an expired one."""
    key = lease_key(prefix)
    mine = _new_record(float(ttl or os.environ.get(TTL_ENV) or DEFAULT_TTL_S))
    seen, seen_at, announced = None, time.monotonic(), False
    while True:
        if store.create_exclusive(key, json.dumps(mine).encode()):
            return Lease(store, key, what, mine)
        current = _read(store, key)
        if current is None:
            continue
        if (current.get("token"), current.get("renewals")) != seen:  # the holder is alive: restart the clock
            seen, seen_at = (current.get("token"), current.get("renewals")), time.monotonic()
        why = _takeover(current, mine, time.monotonic() - seen_at)
        if why:
            say(f"{what}: taking over the lease of {holder(current)} ({why}); resuming its work")
            store.delete(key)
            continue
        if not announced:
            say(f"{what}: waiting: {holder(current)} is writing it; its result is used when it finishes, or "
                "its work is taken over if it stops renewing its lease")
            announced = True
        time.sleep(min(2.0, float(current.get("ttl") or mine["ttl"]) / 3))


def _takeover(current: dict, mine: dict, idle: float) -> str:
    """Why the current lease may be taken over now, or '' while its holder may still be at work."""
    if current.get("owner") == mine["owner"]:
        return "an earlier attempt of this run"
    if _dead_here(current):
        return "its process is gone"
    if idle > float(current.get("ttl") or mine["ttl"]):
        return f"not renewed for {idle:.0f} s"
    return ""


def _renew(lease: Lease, stop: threading.Event) -> None:
    """Every ttl/3: still ours? renew it. Taken over: mark lost (the holder stops at its next commit point).
    A store that cannot be reached is tried again next time: the lease only expires after a whole ttl."""
    while not stop.wait(lease.record["ttl"] / 3):
        try:
            current = _read(lease.store, lease.key)
            if current is not None and current.get("token") != lease.record["token"]:
                lease.lost = f"lost the lease to {holder(current)}"
                log.error("%s: %s", lease.what, lease.lost)
                return
            lease.record["renewals"] += 1
            lease.store.put_json(lease.key, lease.record)
        except AquariumError as e:
            log.warning("%s: could not renew the lease (%s); trying again", lease.what, e)


def release(lease: Lease) -> None:
    """Delete the lease if it is still ours; if the store is down it simply expires."""
    with contextlib.suppress(AquariumError):
        current = _read(lease.store, lease.key)
        if current is not None and current.get("token") == lease.record["token"]:
            lease.store.delete(lease.key)


@contextlib.contextmanager
def held(store: Store, prefix: str, what: str, say=_say, ttl: float | None = None):
    """`with held(store, prefix, "variant cnn-a") as lease:` -- the one writer of prefix inside the block."""
    lease = acquire(store, prefix, what, say, ttl)
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lease, stop), daemon=True, name="lease-renewal")
    renewer.start()
    try:
        yield lease
    finally:
        stop.set()
        renewer.join(10)
        release(lease)
