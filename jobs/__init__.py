"""Thin click entrypoints: parse options, call `common/`, exit with the right code."""

from __future__ import annotations

import contextlib
import functools
import importlib.machinery
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep job logs readable: errors only from TF

import click

from common.errors import EXIT_TRANSIENT, AquariumError, from_os_error


# What TensorFlow's native libraries print while they load, before TF_CPP_MIN_LOG_LEVEL is read: absl's pre-init
# notice and the oneDNN / CPU-feature notices (AVX512 and AMX machines print them; AVX2-only ones do not).
STARTUP_NOISE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\)|[IW]\d{4} [\d:. ]+\d+ "
                           r"(port|cpu_feature_guard)\.cc:\d+\]|To enable the following instructions:")


@contextlib.contextmanager
def quiet_native_startup():
    """Run a block with the native libraries' start-up notices kept off stderr, so an error is one line on every
    machine; anything else written to stderr meanwhile is passed on. TF_CPP_MIN_LOG_LEVEL=0 shows everything."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not STARTUP_NOISE.match(line):
                    sys.stderr.write(line)


class QuietTensorFlowImport:
    """Import hook: TensorFlow loads lazily, deep inside whichever job needs it (never for --help), so its first
    import -- wherever it happens -- runs inside `quiet_native_startup`. Removes itself after that import."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                with quiet_native_startup():
                    load(module)

            spec.loader.exec_module = exec_module
        return spec


if "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, QuietTensorFlowImport())

config_option = click.option("--config", "config_path", default="sweep.yaml", show_default=True,
                             type=click.Path(dir_okay=False), help="sweep spec (YAML)")
store_option = click.option("--store", default=None, help="store URI; overrides the spec's `store`")


def open_sweep(config_path: str, trials: bool = True, **overrides):
    """The sweep spec with the command line's overrides applied (`config.resolve`: --store wins over `store:`,
    the S3 endpoint decided once), and its store. A sweep with searches gets the trials asked so far as variants
    (`search.with_trials`), so every job, `status` and `aggregate` see them like the spec's own; `trials=False`
    for the drivers (they replay the journal themselves) and `plan` (offline)."""
    from common.config import load_sweep, resolve
    from common.store import open_store

    sweep = resolve(load_sweep(config_path), **overrides)
    store = open_store(sweep.store, sweep.endpoint)
    if sweep.searches and trials:
        from common.search import with_trials

        sweep = with_trials(store, sweep)
    return sweep, store


EXIT_BROKEN_PIPE = 141  # what a shell reports for a process that SIGPIPE ended: `cat`, `grep` ... | head


def exits_cleanly(fn):
    """Run a job body; on a known error print one line (what, where, how to fix) and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AquariumError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except BrokenPipeError:  # the reader went away (`predict ... | head`): stop quietly, as `cat` would
            _quiet_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
        except (ConnectionError, TimeoutError) as e:
            click.echo(f"error: transient: {e}", err=True)
            sys.exit(EXIT_TRANSIENT)
        except OSError as e:  # a local file or the output itself: disk full, read-only, a file in the way
            _quiet_stdout()
            err = from_os_error(e, "writing the output (stdout)" if e.filename is None else "local file",
                                "fix the path or its permissions, or write the output elsewhere")
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)

    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a full or closed output stays quiet."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def sweep_job(name: str):
    """A job that reads the sweep's store: `--config` and `--store`, the resolved sweep and its store handed to
    the body as (sweep, store), known errors as one line and their exit code. The body's docstring is its help."""

    def decorate(body):
        @click.command(name, help=body.__doc__)
        @config_option
        @store_option
        @exits_cleanly
        def command(config_path, store):
            return body(*open_sweep(config_path, store=store))

        return command

    return decorate
