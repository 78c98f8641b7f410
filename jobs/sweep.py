"""`aquarium sweep ...`: run a whole sweep locally or in Docker, plan/submit/stop it on Kubernetes, show status."""

from __future__ import annotations

import click

from jobs import config_option, exits_cleanly, open_sweep, store_option

namespace_option = click.option("--namespace", "-n", default=None, help="namespace [default: kubernetes.namespace]")


@click.group("sweep")
def command():
    """Whole-sweep commands."""


@command.command("run")
@config_option
@store_option
@click.option("--executor", "kind", type=click.Choice(["local", "docker"]), default="local", show_default=True,
              help="run each job as a local process, or as `docker run IMAGE <job argv>`")
@click.option("--max-parallel", type=click.IntRange(1), default=None,
              help="variants at a time [default: one per GPU, else CPUs/2; capped by the spec's max_parallel]")
@click.option("--source", default=None, help="dataset zip for prepare; overrides dataset.source")
@click.option("--image", default=None, help="image for --executor docker [default: the spec's kubernetes.image]")
@exits_cleanly
def run(config_path, store, kind, max_parallel, source, image):
    """prepare -> every variant (in parallel, separate processes) -> aggregate, on this machine.

    Finished variants are skipped, interrupted ones resume. Exit code: 0 when aggregate succeeded (failed
    variants are listed in the summary), else the exit code of prepare or aggregate; 143 when interrupted."""
    import sys

    from common.executor import run_sweep

    sweep, _ = open_sweep(config_path, trials=False, store=store, source=source, image=image)
    sys.exit(run_sweep(sweep, config_path, kind, max_parallel).exit_code)


@command.command("status")
@config_option
@store_option
@click.option("--kubernetes", "-k", "with_jobs", is_flag=True,
              help="add each variant's Job state on the cluster, and a detached sweep's driver and table")
@namespace_option
@exits_cleanly
def status(config_path, store, with_jobs, namespace):
    """Phase, epoch, validation accuracy and elapsed time of every variant, read from the store."""
    from common.status import NUMBERS, status_rows
    from common.table import render

    sweep, target = open_sweep(config_path, store=store, namespace=namespace)
    rows = status_rows(target, sweep)
    if not with_jobs:
        click.echo(render(rows, NUMBERS))
        return
    from common import k8s

    apis = k8s.connect()
    states = k8s.job_states(sweep, apis)
    click.echo(render([{"variant": r["variant"], "job": states[r["variant"]], **r} for r in rows], NUMBERS))
    for line in k8s.detached_summary(sweep, apis):
        click.echo(line)


# ---------------------------------------------------------------- Kubernetes: plan, submit, stop (common/k8s/)

source_option = click.option("--source", default=None, help="dataset zip for prepare (s3:// or https://); "
                                                            "overrides dataset.source")
endpoint_option = click.option("--endpoint", default=None,
                               help="S3 endpoint the pods use (AWS_ENDPOINT_URL); wins over AWS_ENDPOINT_URL here, "
                                    "which wins over the spec's endpoint")
image_option = click.option("--image", default=None, help="container image; overrides kubernetes.image")
poll_option = click.option("--poll-seconds", type=click.FloatRange(0.1), default=None,
                           help="seconds between looks at the cluster; overrides kubernetes.poll_seconds")
pull_option = click.option("--pull-timeout", type=click.IntRange(30), default=None,
                           help="seconds a failing image pull may retry before submit gives up (exit 2); "
                                "overrides kubernetes.pull_timeout_seconds")


def manifest_options(fn):
    """The options that decide what `plan` renders and `submit` sends."""
    for option in reversed([config_option, store_option, source_option, endpoint_option, image_option,
                            namespace_option, poll_option, pull_option]):
        fn = option(fn)
    return fn


def _checked_manifests(config_path, **overrides):
    """The resolved sweep, its spec text and its manifests (rendered once) and the plan's errors; warnings are
    printed here."""
    from pathlib import Path

    from common import k8s

    sweep, _ = open_sweep(config_path, trials=False, **overrides)
    text = Path(config_path).read_text()
    manifests = k8s.render(sweep, text)
    errors, warnings = k8s.plan_problems(sweep, manifests, config_path)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    return sweep, text, manifests, errors


@command.command("plan")
@manifest_options
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="write every manifest (and rbac.yaml) as YAML files here")
@exits_cleanly
def plan(config_path, out_dir, **overrides):
    """Render the sweep's Kubernetes manifests, validate them offline against the official schema (the minimum
    supported and the current Kubernetes), check store, image, GPU and polling settings. Exit 2 with one line per
    problem."""
    import sys

    from common import k8s

    sweep, text, manifests, errors = _checked_manifests(config_path, **overrides)
    click.echo(k8s.summary(manifests))
    if out_dir:
        paths = k8s.write_manifests(manifests, out_dir)
        click.echo(f"wrote {len(paths)} files to {out_dir} (kubectl apply -f {out_dir}/rbac.yaml once per namespace)")
    for e in errors:
        click.echo(f"error: {e}", err=True)
    if errors:
        sys.exit(2)
    click.echo(f"plan ok: {len(manifests)} manifests valid against Kubernetes {k8s.MIN_VERSION} and "
               f"{k8s.SCHEMA_VERSION}")


@command.command("submit")
@manifest_options
@click.option("--watch/--no-watch", default=True, show_default=True,
              help="follow the sweep until it ends; --no-watch submits what can start now and returns "
                   "(run submit again to continue: it is idempotent)")
@click.option("--detach", is_flag=True, help="run the submitter in the cluster (a driver Job) and return once "
                                             "it runs; follow with `sweep status --kubernetes` and `sweep logs`")
@click.option("--driver", is_flag=True, hidden=True, help="this process is the driver pod of --detach")
@exits_cleanly
def submit(config_path, watch, detach, driver, **overrides):
    """Run the sweep on Kubernetes: ConfigMap, prepare Job, variant Jobs (max_parallel at a time), aggregate Job.

    Existing Jobs are not recreated; variants already finished in the store with the same config are skipped.
    Exit 0 when every step succeeded, 1 when one failed, 2 on a bad spec or a pod that cannot start, 3 when
    --no-watch left work running, 75 when the cluster is unreachable."""
    import sys

    from common import k8s
    from common.errors import EXIT_INTERRUPTED, EXIT_STILL_RUNNING, BadInput

    sweep, text, manifests, errors = _checked_manifests(config_path, **overrides)
    if errors:
        for e in errors[1:]:
            click.echo(f"error: {e}", err=True)
        raise BadInput(errors[0])
    sub = k8s.Submitter(sweep, manifests, k8s.connect(), echo=click.echo, driver=driver)
    if detach:
        state = k8s.detach(sub)
        click.echo(f"detached: the driver Job {k8s.job_name(sweep, 'driver')} is {state} in namespace "
                   f"{sweep.kubernetes.namespace}; follow with `aquarium sweep status --kubernetes --config "
                   f"{config_path}` and `aquarium sweep logs VARIANT --config {config_path}`")
        return
    try:
        result = sub.run(watch=watch)
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; the Jobs keep running in namespace {sweep.kubernetes.namespace}. "
                   f"Reattach: aquarium sweep submit --config {config_path} (same options); remove them: "
                   f"aquarium sweep stop --config {config_path}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if result.exit_code == EXIT_STILL_RUNNING:
        click.echo("submitted; the sweep is still running: run `aquarium sweep submit` again (or with --watch)")
    sys.exit(result.exit_code)


@command.command("stop")
@config_option
@namespace_option
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(1),
              help="seconds to wait for the pods to be gone (they get their grace period to checkpoint)")
@exits_cleanly
def stop(config_path, namespace, timeout):
    """Delete the sweep's Jobs in the foreground and wait until their pods are gone, then its ConfigMaps.
    Results stay in the store."""
    from common import k8s
    from common.config import load_sweep, resolve

    sweep = resolve(load_sweep(config_path), namespace=namespace)
    deleted = k8s.stop(sweep, k8s.connect(), timeout=timeout)
    ns = sweep.kubernetes.namespace
    click.echo(f"deleted {len(deleted)} Jobs in {ns}: {', '.join(deleted)}" if deleted
               else f"no Jobs of sweep {sweep.name} in {ns}")


@command.command("logs")
@click.argument("step")
@config_option
@store_option
@namespace_option
@exits_cleanly
def logs(step, config_path, store, namespace):
    """The log of a variant (or prepare, aggregate, driver) on Kubernetes: its pod's while it runs, the store's
    job.log after."""
    from common import k8s
    from common.store import open_store

    sweep, target = open_sweep(config_path, store=store, namespace=namespace)
    if step not in [*sweep.names, "prepare", "aggregate", "driver"]:
        sweep.variant(step)  # one line naming the known variants
    target = target if step in sweep.names else None
    click.echo(k8s.logs(sweep, k8s.connect(), step, target), nl=False)
