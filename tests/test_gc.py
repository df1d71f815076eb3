"""The garbage collector's measured pauses (harness/trial/measure.py), recorded with every trial's
throughput, and engine.gc_freeze's frozen heap around training."""

import gc

from harness.trial.measure import GcPauses, throughput


def test_gc_pauses_count_full_collections_and_their_time_while_installed():
    with GcPauses() as pauses:
        gc.collect()
        gc.collect(0)
    assert pauses.full_collections == 1 and pauses.pause_s > 0
    gc.collect()  # uninstalled: not counted
    assert pauses.full_collections == 1


def test_throughput_reports_the_gc_pauses_of_the_timed_steps_only():
    out = throughput([9.0, 1.0, 1.0], [10] * 3, [10] * 3, [1] * 3, warmup=1,
                     gc_pause_s=[5.0, 0.25, 0.0])  # fmt: skip
    assert out["gc_pause_s"] == 0.25 and out["step_time_median_s"] == 1.0
