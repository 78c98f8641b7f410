"""Errors and the exit codes every job uses.

Kubernetes reads a pod's exit code to decide whether a retry can help, so the codes are part of the
contract with `k8s/` (the variant Job's podFailurePolicy maps EXIT_BAD_INPUT to FailJob).
"""

import errno

EXIT_OK = 0
EXIT_FAILED = 1  # a step of the sweep failed (`sweep run` without its own code, `sweep submit`)
EXIT_BAD_INPUT = 2  # bad configuration or data: retrying cannot help
EXIT_STILL_RUNNING = 3  # `sweep submit --no-watch`: submitted, the sweep is still running (not an error)
EXIT_TRANSIENT = 75  # infrastructure trouble (store unreachable, download failed): retry may help (EX_TEMPFAIL)
EXIT_INTERRUPTED = 143  # SIGTERM: pod evicted or preempted; rerun resumes from the last checkpoint


class AquariumError(Exception):
    """Base class: carries the exit code the job should end with."""

    exit_code = EXIT_TRANSIENT


class BadInput(AquariumError):
    """Configuration, dataset or argument the user must fix. Message: what, where, how to fix."""

    exit_code = EXIT_BAD_INPUT


class TransientError(AquariumError):
    """Failure outside the user's input (network, store). A rerun may succeed."""

    exit_code = EXIT_TRANSIENT


class Interrupted(AquariumError):
    """The job received SIGTERM and stopped after saving what it could."""

    exit_code = EXIT_INTERRUPTED


# OSErrors a rerun can get past (space freed, disk back); every other one is a path or permission to fix.
TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ENOMEM,
                    errno.EMFILE, errno.ENFILE, errno.ESTALE}


def from_os_error(e: OSError, where: str, fix: str) -> AquariumError:
    """One line for an OSError of the local file system: where it happened, the path, the reason and the fix.
    Disk full or I/O trouble is transient (75: free space, rerun, the work resumes); anything else -- a file in
    the way of a folder, no permission, a read-only file system -- is a bad path (2) that `fix` tells how to
    correct."""
    path = f" {e.filename}" if e.filename else ""
    reason = e.strerror or type(e).__name__
    if e.errno in TRANSIENT_ERRNOS:
        return TransientError(f"{where}:{path}: {reason}: free space or fix the disk, then rerun "
                              "(finished work is kept)")
    return BadInput(f"{where}:{path}: {reason}: {fix}")
