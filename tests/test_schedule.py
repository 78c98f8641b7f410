"""The scheduling core on its own: every transition from states to decisions, without processes or an API."""

from __future__ import annotations

import pytest

from common.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_STILL_RUNNING
from common.schedule import (ACTIVE, AGGREGATE, FAILED, FINISHED, NO_PREPARE, NOTHING, PREPARE, PRUNED, SKIPPED,
                             SUCCEEDED, WAITING, Schedule)


def states(prepare=WAITING, aggregate=WAITING, **variants) -> dict:
    return {PREPARE: prepare, AGGREGATE: aggregate, **variants}


def test_prepare_comes_first_and_alone():
    d = Schedule(["a", "b"], capacity=2).decide({})
    assert d.start == [PREPARE] and d.skip == {} and not d.over and d.exit_code == EXIT_STILL_RUNNING
    d = Schedule(["a", "b"], capacity=2).decide(states(ACTIVE))
    assert d.start == [] and not d.over


def test_variants_start_up_to_the_capacity_in_order_and_fill_freed_slots():
    s = Schedule(["a", "b", "c"], capacity=2)
    assert s.decide(states(SUCCEEDED)).start == ["a", "b"]
    assert s.decide(states(SUCCEEDED, a=ACTIVE, b=ACTIVE)).start == []
    assert s.decide(states(SUCCEEDED, a=FAILED, b=ACTIVE)).start == ["c"]
    assert s.decide(states(SUCCEEDED, a=SUCCEEDED, b=ACTIVE, c=ACTIVE)).start == []


def test_finished_variants_are_skipped_and_do_not_take_a_slot():
    d = Schedule(["a", "b", "c"], capacity=1).decide(states(SUCCEEDED), finished={"a", "b"})
    assert d.skip == {"a": FINISHED, "b": FINISHED} and d.start == ["c"]
    before_prepare = Schedule(["a"], capacity=1).decide({}, finished={"a"})  # known at once, shown at once
    assert before_prepare.skip == {"a": FINISHED} and before_prepare.start == [PREPARE]
    ran = Schedule(["a"], capacity=1).decide(states(SUCCEEDED, a=SUCCEEDED), finished={"a"})
    assert "a" not in ran.skip  # a variant that ran is not skipped afterwards by its own result


def test_aggregate_after_every_variant_has_ended_with_one_result():
    s = Schedule(["a", "b"], capacity=2)
    assert AGGREGATE not in s.decide(states(SUCCEEDED, a=SUCCEEDED, b=ACTIVE)).start
    d = s.decide(states(SUCCEEDED, a=FAILED, b=SUCCEEDED))
    assert d.start == [AGGREGATE] and not d.over
    d = s.decide(states(SUCCEEDED, a=SUCCEEDED), finished={"b"})  # b skipped and aggregate started in one answer
    assert d.skip == {"b": FINISHED} and d.start == [AGGREGATE]
    everything_finished = s.decide(states(SUCCEEDED), finished={"a", "b"})
    assert everything_finished.start == [AGGREGATE]
    not_before_prepare = s.decide(states(ACTIVE), finished={"a", "b"})
    assert not_before_prepare.start == []


def test_the_end_and_its_exit_code():
    local, k8s = Schedule(["a", "b"], capacity=2), Schedule(["a", "b"], capacity=2, fail_on_variant=True)
    done = states(SUCCEEDED, SUCCEEDED, a=SUCCEEDED, b=FAILED)
    assert local.decide(done).over and local.decide(done).exit_code == EXIT_OK  # the report names the failure
    assert k8s.decide(done).exit_code == EXIT_FAILED
    assert k8s.decide(states(SUCCEEDED, a=FAILED, b=ACTIVE)).exit_code == EXIT_FAILED  # known before the end
    agg_failed = states(SUCCEEDED, FAILED, a=SUCCEEDED, b=SUCCEEDED)
    assert local.decide(agg_failed, codes={AGGREGATE: 75}).exit_code == 75
    assert k8s.decide(agg_failed).exit_code == EXIT_FAILED and k8s.decide(agg_failed).over


def test_a_failed_prepare_skips_the_rest_and_ends_the_sweep_with_its_code():
    d = Schedule(["a", "b"], capacity=2).decide(states(FAILED), finished={"b"}, codes={PREPARE: 2})
    assert d.skip == {"a": NO_PREPARE, "b": FINISHED, AGGREGATE: NO_PREPARE} and d.start == []
    assert d.over and d.exit_code == 2
    assert Schedule(["a"], capacity=1).decide(states(FAILED)).exit_code == EXIT_FAILED  # code unknown


def test_no_variant_with_a_result_skips_aggregate_and_exits_2():
    d = Schedule(["a", "b"], capacity=2).decide(states(SUCCEEDED, a=FAILED, b=PRUNED))
    assert d.skip == {AGGREGATE: NOTHING} and d.start == [] and d.over and d.exit_code == EXIT_BAD_INPUT


def test_pruned_variants_end_without_failing_and_free_their_slot():
    s = Schedule(["a", "b", "c"], capacity=1, fail_on_variant=True)
    assert s.decide(states(SUCCEEDED, a=PRUNED)).start == ["b"]
    d = s.decide(states(SUCCEEDED, SUCCEEDED, a=PRUNED, b=SUCCEEDED, c=PRUNED))
    assert d.over and d.exit_code == EXIT_OK


def test_steps_added_between_calls_wait_for_a_slot_and_hold_aggregate_back():
    s = Schedule(["a"], capacity=1)
    assert s.decide(states(SUCCEEDED, a=ACTIVE)).start == []
    s.add("b")
    assert s.steps == [PREPARE, "a", "b", AGGREGATE]
    assert s.decide(states(SUCCEEDED, a=ACTIVE)).start == []
    assert s.decide(states(SUCCEEDED, a=SUCCEEDED)).start == ["b"]  # not aggregate: b has not run
    with pytest.raises(ValueError, match="in the sweep already"):
        s.add("a")


def test_unknown_states_and_capacities_are_refused():
    with pytest.raises(ValueError, match="unknown step states"):
        Schedule(["a"], capacity=1).decide({PREPARE: "Running"})
    with pytest.raises(ValueError, match="capacity"):
        Schedule(["a"], capacity=0)


def test_a_whole_sweep_driven_by_its_own_answers():
    """A driver that does exactly what it is told and finishes every step at the next look: the order of starts."""
    s = Schedule(["a", "b", "c"], capacity=2)
    now, order = {}, []
    for _ in range(10):
        now.update({n: SUCCEEDED for n, st in now.items() if st == ACTIVE})
        d = s.decide(now, finished={"c"})
        now.update({n: SKIPPED for n in d.skip})
        now.update({n: ACTIVE for n in d.start})
        order.append(d.start)
        if d.over:
            break
    assert order == [[PREPARE], ["a", "b"], [AGGREGATE], []] and d.exit_code == EXIT_OK
