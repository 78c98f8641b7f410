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

    sweep, _ = open_sweep(config_path, store=store, source=source, image=image)
    sys.exit(run_sweep(sweep, config_path, kind, max_parallel).exit_code)


@command.command("status")
@config_option
@store_option
@click.option("--kubernetes", "-k", "with_jobs", is_flag=True, help="add each variant's Job state on the cluster")
@namespace_option
@exits_cleanly
def status(config_path, store, with_jobs, namespace):
    """Phase, epoch, validation accuracy and elapsed time of every variant, read from the store."""
    from common.status import NUMBERS, status_rows
    from common.table import render

    sweep, target = open_sweep(config_path, store=store)
    rows = status_rows(target, sweep)
    if with_jobs:
        from common import k8s

        states = k8s.job_states(sweep, k8s.connect(), namespace)
        rows = [{"variant": r["variant"], "job": states[r["variant"]], **r} for r in rows]
    click.echo(render(rows, NUMBERS))


# ---------------------------------------------------------------- Kubernetes: plan, submit, stop (common/k8s.py)

source_option = click.option("--source", default=None, help="dataset zip for prepare (s3:// or https://); "
                                                            "overrides dataset.source")
endpoint_option = click.option("--endpoint", default=None,
                               help="S3 endpoint the pods use (AWS_ENDPOINT_URL); overrides the spec's endpoint")
image_option = click.option("--image", default=None, help="container image; overrides kubernetes.image")


def manifest_options(fn):
    """The options that decide what `plan` renders and `submit` sends: spec, store, source, endpoint, image."""
    for option in reversed([config_option, store_option, source_option, endpoint_option, image_option,
                            namespace_option]):
        fn = option(fn)
    return fn


def _checked_manifests(config_path, store, source, endpoint, image, namespace):
    """Render the sweep's manifests and check them (plan and submit alike); warnings are printed here.
    Returns (sweep, spec text, manifests, errors)."""
    from pathlib import Path

    from common import k8s
    from common.config import load_sweep

    sweep = load_sweep(config_path)
    if image:
        sweep.kubernetes.image = image
    text = Path(config_path).read_text()
    manifests = k8s.render(sweep, text, namespace, store, source, endpoint)
    errors, warnings = k8s.plan_problems(sweep, manifests, config_path, store, source)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    return sweep, text, manifests, errors


@command.command("plan")
@manifest_options
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="write every manifest (and rbac.yaml) as YAML files here")
@exits_cleanly
def plan(config_path, store, source, endpoint, image, namespace, out_dir):
    """Render the sweep's Kubernetes manifests, validate them offline against the official schema, check store,
    image and GPU settings. Exit 2 with one line per problem."""
    import sys

    from common import k8s

    sweep, text, manifests, errors = _checked_manifests(config_path, store, source, endpoint, image, namespace)
    click.echo(k8s.summary(manifests))
    if out_dir:
        paths = k8s.write_manifests(manifests, out_dir)
        click.echo(f"wrote {len(paths)} files to {out_dir} (kubectl apply -f {out_dir}/rbac.yaml once per namespace)")
    for e in errors:
        click.echo(f"error: {e}", err=True)
    if errors:
        sys.exit(2)
    click.echo(f"plan ok: {len(manifests)} manifests valid against Kubernetes {k8s.SCHEMA_VERSION}")


@command.command("submit")
@manifest_options
@click.option("--watch/--no-watch", default=True, show_default=True,
              help="follow the sweep until it ends; --no-watch submits what can start now and returns "
                   "(run submit again to continue: it is idempotent)")
@click.option("--poll-seconds", default=10.0, show_default=True, type=click.FloatRange(0.1))
@exits_cleanly
def submit(config_path, store, source, endpoint, image, namespace, watch, poll_seconds):
    """Run the sweep on Kubernetes: ConfigMap, prepare Job, variant Jobs (max_parallel at a time), aggregate Job.

    Existing Jobs are not recreated; variants already finished in the store with the same config are skipped.
    Exit 0 when every step succeeded, 1 when one failed, 2 on a bad spec, 3 when --no-watch left work running."""
    import sys

    from common import k8s
    from common.errors import BadInput

    sweep, text, manifests, errors = _checked_manifests(config_path, store, source, endpoint, image, namespace)
    if errors:
        for e in errors[1:]:
            click.echo(f"error: {e}", err=True)
        raise BadInput(errors[0])
    result = k8s.submit(sweep, text, k8s.connect(), watch=watch, namespace=namespace, store=store, source=source,
                        endpoint=endpoint, poll_seconds=poll_seconds, echo=click.echo)
    if result.exit_code == 3:
        click.echo("submitted; the sweep is still running: run `aquarium sweep submit` again (or with --watch)")
    sys.exit(result.exit_code)


@command.command("stop")
@config_option
@namespace_option
@exits_cleanly
def stop(config_path, namespace):
    """Delete the sweep's Jobs and their pods (propagationPolicy Background). Results stay in the store."""
    from common import k8s
    from common.config import load_sweep

    sweep = load_sweep(config_path)
    deleted = k8s.stop(sweep, k8s.connect(), namespace)
    ns = namespace or sweep.kubernetes.namespace
    click.echo(f"deleted {len(deleted)} Jobs in {ns}: {', '.join(deleted)}" if deleted
               else f"no Jobs of sweep {sweep.name} in {ns}")
