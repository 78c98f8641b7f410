"""Searches (issue 22): the spec's strict checks, the study's journal in the store (same seed, same trials; a
restarted driver carries on), and a real local search on generated data whose pruning is visible, with its driver
killed mid-search and run again."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from helpers import ROOT, aquarium

from common.config import parse_sweep
from common.errors import BadInput
from common.schedule import ACTIVE, SUCCEEDED
from common.search import Driver, rungs, search_prefix, trial_variant
from common.store import join, open_store

CLASSES = ["fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"]
TINY = {"image_size": 32, "epochs": 4, "batch_size": 8, "steps_per_epoch": 3, "early_stopping_patience": 4,
        "filters": [8, 16, 16], "dense_units": 16, "resources": {"gpu": 0, "cpu": "1", "memory": "2Gi"}}


def spec(search: dict | None = None, **changes) -> dict:
    """A sweep with one tiny variant and one search over learning rate and dropout (successive halving)."""
    s = {"name": "lr", "base": {"dense_units": 16}, "sampler": "random", "trials": 6, "seed": 3, "max_parallel": 2,
         "space": {"learning_rate": {"loguniform": [1.0e-6, 3.0e-2]}, "dropout": {"uniform": [0.0, 0.5]}},
         "early_stopping": {"method": "successive_halving", "min_epochs": 1, "reduction_factor": 2}}
    return {"name": "srch", "dataset": {"source": "data.zip", "classes": CLASSES}, "store": "file://./store",
            "max_parallel": 2, "defaults": TINY, "variants": [{"name": "cnn-a", "epochs": 1}],
            "searches": [{**s, **(search or {})}], **changes}


@pytest.mark.parametrize("search, message", [
    ({"space": {"learning_rat": {"uniform": [0.1, 0.2]}}}, "space.learning_rat: 'learning_rat' is not a variant key"),
    ({"space": {"augment.fram": {"choice": [0.1]}}}, "space.augment.fram: 'augment.fram' is not a variant key"),
    ({"space": {"dropout": {"uniform": [0.5, 0.5]}}}, "the range [0.5, 0.5] is empty"),
    ({"space": {"dropout": {"uniform": [0.1, 0.2], "choice": [0.1]}}}, "exactly one of choice"),
    ({"space": {"dropout": {"uniform": [0.1, 1.5]}}}, "space.dropout: 1.5 is not a valid value"),
    ({"space": {"augment.frame": {"choice": [0.2, 2.0]}}}, "space.augment.frame: 2.0 is not a valid value"),
    ({"sampler": "grid", "trials": None}, "space.learning_rate: a grid needs a list of values"),
    ({"sampler": "grid", "trials": 5, "space": {"dense_units": {"int": [8, 16], "step": 8}}},
     "5 trials but the grid has 2 points"),
    ({"base": "cnn-z"}, "base: no variant named 'cnn-z'"),
    ({"base": {"extends": "cnn-z", "epochs": 3}}, "base: no variant named 'cnn-z'"),
    ({"trials": None}, "give the number of trials"),
    ({"early_stopping": {"min_epochs": 4}}, "min_epochs: 4 is not below the trials' 4 epochs"),
    ({"early_stopping": {"method": "asha"}}, "early_stopping"),
    ({"pruner": "median"}, "unknown key 'pruner'"),
])
def test_a_bad_search_is_one_line_naming_its_place(search, message):
    with pytest.raises(BadInput) as err:
        parse_sweep(spec(search), "s.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "searches[0]" in str(err.value)


def test_a_bad_search_exits_2_before_any_work(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec({"space": {"dropout": {"uniform": [0.3, 0.1]}}})))
    done = aquarium("sweep", "status", "--config", tmp_path / "s.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 's.yaml'}: searches[0] 'lr'.space.dropout: the range [0.3, 0.1] is empty: give "
        "[low, high] with low < high"]


def test_grid_and_int_spaces_resolve_to_variants():
    sweep = parse_sweep(spec({"sampler": "grid", "trials": None, "early_stopping": "none", "base": "cnn-a", "space": {
        "dense_units": {"int": [8, 24], "step": 8}, "augment.frame": {"choice": [0.0, 0.5]}}}))
    assert sweep.searches[0].trials == 6  # the grid's size
    trial = trial_variant(sweep, sweep.searches[0], 5, {"dense_units": 24, "augment.frame": 0.5})
    assert (trial.name, trial.epochs, trial.dense_units, trial.augment.frame) == ("lr-5", 1, 24, 0.5)  # cnn-a's epochs
    assert trial.config_hash != sweep.variant("cnn-a").config_hash
    over = parse_sweep(spec({"base": {"extends": "cnn-a", "epochs": 3, "kernel_size": 5}})).searches[0]
    trial = trial_variant(sweep, over, 0, {"learning_rate": 0.01, "dropout": 0.2})
    assert (trial.epochs, trial.kernel_size, trial.dense_units, trial.learning_rate) == (3, 5, 16, 0.01)
    assert rungs(sweep.searches[0], 4) == []
    assert rungs(parse_sweep(spec()).searches[0], 9) == [1, 2, 4, 8]


def fake_epochs(store, sweep, variants, values: dict[str, float], epoch: int) -> None:
    """What a trial writes after an epoch: status.json and history.csv (val accuracy `values[name]` each epoch)."""
    for v in variants:
        prefix = sweep.variant_prefix(v.name)
        store.put_json(join(prefix, "status.json"), {"epoch": epoch, "config_hash": v.config_hash,
                                                     "training_revision": 4})
        rows = "".join(f"{e},1,1,1,{values[v.name]},0.1\n" for e in range(1, epoch + 1))
        store.put_text(join(prefix, "history.csv"), "epoch,loss,accuracy,val_loss,val_accuracy,lr\n" + rows)


@pytest.mark.parametrize("sampler", ["random", "grid", "tpe"])
def test_same_seed_same_trials_and_a_restarted_driver_carries_on(tmp_path, sampler):
    """Two stores, the same seed and the same results: the same trials. A driver restarted after each pass
    (a new Driver replaying the journal) asks each number once and loses none."""
    changes = {"sampler": sampler, "trials": 6, "max_parallel": 2}
    if sampler == "grid":
        changes["space"] = {"dense_units": {"int": [8, 40], "step": 16}, "augment.frame": {"choice": [0.0, 0.5]}}
    sweep = parse_sweep(spec(changes))
    seen = []
    for run in ("a", "b"):
        store, asked, states = open_store(f"file://{tmp_path / run}"), [], {}
        while len(asked) < 6 or any(s == ACTIVE for s in states.values()):
            with Driver(store, sweep, say=lambda m: None) as driver:  # a fresh driver every pass: restarts
                new = driver.poll(states)
            asked += new
            running = [v for v in asked if states.get(v.name) == ACTIVE]
            fake_epochs(store, sweep, running, {v.name: 0.1 * (v.name[-1] == "0") + 0.3 for v in running}, 1)
            for v in running:  # each running trial "finishes" with its value
                store.mark_complete(sweep.variant_prefix(v.name), {"config_hash": v.config_hash,
                                                                   "training_revision": 4, "val_accuracy": 0.3})
                states[v.name] = SUCCEEDED
            states.update({v.name: ACTIVE for v in new})
        names = [v.name for v in asked]
        assert names == [f"lr-{i}" for i in range(6)]  # each number asked once, none lost
        seen.append([v.model_dump() for v in asked])
        journal = [e for k in store.list(join(search_prefix(sweep, "lr"), "journal")) for e in store.get_json(k)]
        assert sum(e["op_code"] == 4 for e in journal) == 6  # CREATE_TRIAL: one per trial
    assert seen[0] == seen[1]
    if sampler == "grid":  # every point once
        assert len({(v["dense_units"], v["augment"]["frame"]) for v in seen[0]}) == 6


def test_a_changed_search_under_a_running_study_is_refused(tmp_path):
    store = open_store(f"file://{tmp_path}")
    with Driver(store, parse_sweep(spec()), say=lambda m: None) as driver:
        driver.poll({})
    with pytest.raises(BadInput, match="search 'lr' changed .* rename the search"):
        with Driver(store, parse_sweep(spec({"seed": 4})), say=lambda m: None):
            pass


# ---------------------------------------------------------------- a real search, its driver killed mid-search

def journal_trials(store, sweep) -> list[dict]:
    """The CREATE_TRIAL entries of the search's journal, in order."""
    keys = store.list(join(search_prefix(sweep, "lr"), "journal"))
    return [e for k in keys for e in store.get_json(k) if e["op_code"] == 4]


def test_real_local_search_prunes_and_survives_a_killed_driver(dataset_zip, tmp_path):
    # a grid of a learning rate that learns within an epoch and one that cannot: whatever order the trials reach
    # the first rung in, a hopeless one that arrives after a good one is below the top half there and stopped
    # (seed 1 orders the grid good, hopeless, good, good, hopeless, hopeless); the first rung is epoch 2
    grid = {"sampler": "grid", "trials": None, "seed": 1, "space": {"learning_rate": {"choice": [0.003, 1.0e-7]},
                                                                    "dropout": {"choice": [0.1, 0.3, 0.5]}},
            "early_stopping": {"method": "successive_halving", "min_epochs": 2, "reduction_factor": 2}}
    raw = spec(grid, dataset={"source": str(dataset_zip), "classes": CLASSES})
    raw["defaults"] = {**TINY, "steps_per_epoch": None}  # every training photo once per epoch
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump(raw))
    sweep, store = parse_sweep(raw), open_store(f"file://{tmp_path / 'store'}")
    prefix = lambda n: sweep.variant_prefix(n)  # noqa: E731
    env = {**os.environ, "AQUARIUM_RUNG_WAIT_S": "120"}

    # 1. Start the sweep; kill its driver (SIGKILL: no cleanup at all) once trials have ended and others run
    first = subprocess.Popen([sys.executable, "-m", "jobs.cli", "sweep", "run", "--config", str(config)],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, ended = time.monotonic() + 600, []
    while time.monotonic() < deadline and first.poll() is None:
        trials = journal_trials(store, sweep)
        phases = {f"lr-{i}": store.get_json(join(prefix(f"lr-{i}"), "status.json")).get("phase")
                  if store.exists(join(prefix(f"lr-{i}"), "status.json")) else None for i in range(len(trials))}
        ended = [n for n, p in phases.items() if p in ("succeeded", "pruned")]
        if len(ended) >= 2 and "running" in phases.values():
            break
        time.sleep(0.5)
    assert first.poll() is None, first.communicate()[0][-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    asked_before = len(journal_trials(store, sweep))
    assert 3 <= asked_before < 6
    done_before = {n: store.get_bytes(join(prefix(n), "_SUCCESS")) for n in ended
                   if store.exists(join(prefix(n), "_SUCCESS"))}

    # 2. Run it again: the same study carries on (its lease taken over from the dead driver at once)
    second = aquarium("sweep", "run", "--config", config, cwd=tmp_path, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    created = journal_trials(store, sweep)
    assert len(created) == 6  # none asked twice, none lost
    records = [store.get_json(join(search_prefix(sweep, "lr"), "trials", f"{i}.json")) for i in range(6)]
    assert [r["name"] for r in records] == [f"lr-{i}" for i in range(6)]
    for name, marker in done_before.items():  # finished before the kill: never retrained
        assert store.get_bytes(join(prefix(name), "_SUCCESS")) == marker
        assert f"{name}: started" not in second.stdout

    # 3. Pruning is visible: trials stopped at the first rung (exit 0, checkpoint kept), survivors trained on
    status = {f"lr-{i}": store.get_json(join(prefix(f"lr-{i}"), "status.json")) for i in range(6)}
    pruned = [n for n, s in status.items() if s["phase"] == "pruned"]
    full = [n for n, s in status.items() if s["phase"] == "succeeded" and s["epoch"] == 4]
    assert full and any(status[n]["epoch"] == 2 for n in pruned), status
    for n in pruned:
        assert status[n]["exit_code"] == 0 and status[n]["epoch"] < 4
        assert store.get_json(join(prefix(n), "checkpoint", "state.json"))["epoch"] == status[n]["epoch"]
        assert store.get_json(join(prefix(n), "verdict.json")) == {"epoch": status[n]["epoch"], "stop": True}
        assert not store.exists(join(prefix(n), "_SUCCESS"))
    shown = aquarium("sweep", "status", "--config", config, cwd=tmp_path).stdout
    assert "pruned at epoch 2" in shown

    # 4. Reported like the rest: the search's table and picture; its best trial competes on validation
    report = join(sweep.prefix, "report")
    summary = store.get_json(join(report, "report.json"))
    rows = {r["trial"]: r for r in summary["searches"]["lr"]}
    assert sorted(rows) == [f"lr-{i}" for i in range(6)]
    assert {rows[n]["state"] for n in pruned} == {"pruned"} and {rows[n]["epochs"] for n in full} == {4}
    assert store.exists(join(report, "search_lr.png"))
    assert "<h2>Search lr</h2>" in store.get_text(join(report, "report.html"))
    board = pd.read_csv(io.BytesIO(store.get_bytes(join(report, "leaderboard.csv"))))
    finished = board[board["state"] == "succeeded"]
    assert set(full) <= set(finished["variant"])
    best = min(finished.to_dict("records"), key=lambda r: (-r["val_accuracy"], r["val_loss"], r["variant"]))
    assert summary["best"]["variant"] == best["variant"]


def test_sweep_yaml_search_is_mnv3s_d_in_one_phase():
    """sweep.yaml's search (README: Searches; bench_search.py runs it) is mnv3s-d's recipe in one phase: the
    backbone, size, optimizer and augmentation of mnv3s-d, every trial's own point of the space, rungs at 1, 3, 9."""
    raw = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    sweep = parse_sweep(raw)
    search = next(s for s in sweep.searches if s.name == "mnv3s-search")
    d = sweep.variant("mnv3s-d")
    trial = trial_variant(sweep, search, 23, {"learning_rate": 1e-4, "trainable_layers": "all", "dropout": 0.3,
                                              "augment.frame": 0.4, "label_smoothing": 0.1})
    assert (trial.name, trial.backbone, trial.image_size, trial.epochs, trial.head_epochs) == (
        "mnv3s-search-23", d.backbone, d.image_size, d.epochs, 0)
    assert (trial.optimizer, trial.learning_rate, trial.augment.frame, trial.augment.border) == (
        d.optimizer, 1e-4, 0.4, d.augment.border)
    assert trial.config_hash != d.config_hash
    assert rungs(search, trial.epochs) == [1, 3, 9]


def test_hyperband_prunes_through_the_same_driver(tmp_path):
    """Hyperband (Optuna's HyperbandPruner: brackets of successive halving) on fake trials that report a fixed
    val accuracy each epoch: some trials are stopped before the end, every trial is told, none asked twice."""
    sweep = parse_sweep(spec({"early_stopping": {"method": "hyperband", "min_epochs": 1, "reduction_factor": 2},
                              "trials": 8}))
    store, states, asked, epoch = open_store(f"file://{tmp_path}"), {}, [], {}
    for _ in range(40):
        with Driver(store, sweep, say=lambda m: None) as driver:
            new = driver.poll(states)
            states.update(driver.ended())
        asked += new
        states.update({v.name: ACTIVE for v in new})
        epoch.update({v.name: 0 for v in new})
        for v in [v for v in asked if states[v.name] == ACTIVE]:  # one more epoch; done after 4
            epoch[v.name] += 1
            fake_epochs(store, sweep, [v], {v.name: int(v.name[3:]) % 3 / 10}, epoch[v.name])
            if epoch[v.name] == 4:
                store.mark_complete(sweep.variant_prefix(v.name), {"config_hash": v.config_hash,
                                                                   "training_revision": 4, "val_accuracy": 0.5})
                states[v.name] = SUCCEEDED
        if len(asked) == 8 and ACTIVE not in states.values():
            break
    assert [v.name for v in asked] == [f"lr-{i}" for i in range(8)]
    pruned = [n for n, s in states.items() if s == "pruned"]
    assert pruned and all(epoch[n] < 4 for n in pruned) and SUCCEEDED in states.values(), (states, epoch)


def test_submit_drives_a_search_and_a_restarted_submitter_carries_on(tmp_path):
    """The Kubernetes submitter (in-memory fake cluster of test_k8s): trials become Jobs as they are asked; a
    submitter stopped mid-search and started again (as `submit` after Ctrl-C, or the driver's next pod) asks no trial
    twice and loses none; the sweep ends when the last trial and aggregate have."""
    from test_k8s import FakeCluster, resolved

    from common import k8s

    raw = yaml.safe_load((ROOT / "smoke.yaml").read_text())
    raw["searches"] = [{"name": "lr", "base": "cnn-a", "sampler": "grid", "max_parallel": 2,
                        "space": {"learning_rate": {"choice": [0.003, 0.01]}, "dropout": {"choice": [0.1, 0.4]}}}]
    text, store, fake, lines = yaml.safe_dump(raw), open_store(f"file://{tmp_path}"), FakeCluster(runtime=2), []

    def tick(_seconds=None):  # a minute of the fake cluster; a trial Job that succeeded wrote its result
        fake.tick()
        for (_, name), job in fake.jobs.items():
            trial = name.removeprefix("smoke-")
            if trial.startswith("lr-") and k8s.job_state(job) == "Succeeded":
                v = sub.sweep.variant(trial)
                store.mark_complete(sub.sweep.variant_prefix(trial), {"config_hash": v.config_hash,
                                                                      "training_revision": 4, "val_accuracy": 0.5})

    sweep = resolved(raw)
    sub = k8s.Submitter(sweep, k8s.render(sweep, text), k8s.Apis(fake, fake, fake), store=store,
                        echo=lines.append, now=fake.now, sleep=tick)
    first = sub.run(max_passes=5)
    assert not first.done and 2 <= len(journal_trials(store, sweep)) < 4
    sweep = resolved(raw)  # a new submitter: only the spec, the cluster and the store
    sub = k8s.Submitter(sweep, k8s.render(sweep, text), k8s.Apis(fake, fake, fake), store=store,
                        echo=lines.append, now=fake.now, sleep=tick)
    second = sub.run()
    assert second.done and second.exit_code == 0, lines[-20:]
    trials = [n for n in fake.created() if n.startswith("smoke-lr-")]
    assert sorted(trials) == [f"smoke-lr-{i}" for i in range(4)]  # each trial one Job
    assert len(journal_trials(store, sweep)) == 4 and fake.created()[-1] == "smoke-aggregate"
    assert {second.states[f"lr-{i}"] for i in range(4)} == {"Succeeded"}


def test_prepare_writes_every_size_a_searchs_trials_can_have(tmp_path):
    """A search at another size than the variants (its base, or image_size in its space) gets its tensors from
    `prepare`, so its first trial does not fail on a size nobody prepared; a continuous image_size is refused."""
    from common.config import load_sweep

    spec = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    spec["searches"][0]["base"]["image_size"] = 160  # a size no variant has
    path = tmp_path / "spec.yaml"

    def sizes(space_size=None):
        if space_size is not None:
            spec["searches"][0]["space"]["image_size"] = space_size
        path.write_text(yaml.safe_dump(spec))
        sweep = load_sweep(path)
        return set(sweep.image_sizes), {v.image_size for v in sweep.variants}

    every, of_variants = sizes()
    assert spec["searches"][0]["base"]["image_size"] not in of_variants
    assert every == of_variants | {spec["searches"][0]["base"]["image_size"]}
    assert {96, 128} <= sizes({"choice": [96, 128]})[0]
    with pytest.raises(BadInput, match=r"space.image_size: a continuous range"):
        sizes({"uniform": [96, 128]})
