"""A stalled device does not hold the job back: its shard goes to another device, every image counted once."""
from __future__ import annotations

import pytest

from real_processes import wait_for
from orchestrator.generated_set import write_set
from orchestrator.jobs import new_job_id, submit_job, wait_job
from tasks.params import JobParams
from tasks.shards import read_images
from tasks.state import JobState
from workers.reaper import STRAGGLER_CHECK_S
from workers.stragglers import STRAGGLER_FACTOR, STRAGGLER_SLACK_S

LATENCY_S = 0.1
STALL_S = 10.0
DEVICES = ("cpu:0", "cpu:1", "cpu:2")
BATCH = 8  # and one batch a shard: the stalled copy, done with its only batch, always tries to write
MARGIN_S = 1.0  # for a loaded 2-core machine: process scheduling, Redis round trips


def run_job(state, ann, backend, coco_eval="faster-coco-eval"):
    params = JobParams(job_id=new_job_id(), annotation=str(ann), image_dir=str(ann.parent / "images"),
                       backend=backend, batch=BATCH, shard_size=BATCH, size_mode="static", static_size=1216, warmup_batches=0,
                       coco_eval=coco_eval)
    submit_job(state, params, read_images(ann), len(DEVICES))
    report = wait_job(state, params.job_id, timeout_s=120)
    return params.job_id, report, report["timestamps"]["reduce_start"] - report["timestamps"]["submit"]


@pytest.mark.slow
def test_one_stalled_device_costs_about_one_detection_delay(redis_url, processes, tmp_path):
    ann, _ = write_set(tmp_path / "set", 240, seed=5)  # load=none: the workers read no image file
    state = JobState.open(redis_url)
    workers = [processes.preprocess_pool(redis_url)] + [processes.device_worker(redis_url, d) for d in DEVICES]
    for w in workers:
        processes.wait_ready(w)

    _, healthy, healthy_s = run_job(state, ann, f"sim:{LATENCY_S * 1000:g}ms,load=none", coco_eval="pycocotools")
    job_id, stalled, stalled_s = run_job(state, ann, f"sim:{LATENCY_S * 1000:g}ms,load=none,stall={STALL_S:g}s@cpu:2#1")

    # README: overdue after FACTOR x the expected time (one batch, LATENCY_S) + SLACK, looked for every CHECK s;
    # then the next free device runs it: at most its current batch and this one
    detection_s = STRAGGLER_FACTOR * LATENCY_S + STRAGGLER_SLACK_S + STRAGGLER_CHECK_S
    budget = detection_s + 2 * LATENCY_S + MARGIN_S
    print(f"\nhealthy {healthy_s:.2f} s, one device stalled {STALL_S:g} s: {stalled_s:.2f} s "
          f"(cost {stalled_s - healthy_s:.2f} s, budget {budget:.2f} s: detection {detection_s:.2f} s "
          f"+ 2 batches + {MARGIN_S:g} s margin)")
    assert stalled_s < healthy_s + budget, (stalled_s, healthy_s)
    assert stalled_s < STALL_S / 2
    reissued = state.reissued(job_id)
    overdue = [shard for shard, why in reissued.items() if "ran it" in why["why"]]
    assert len(overdue) == 1 and "cpu:2" in reissued[overdue[0]]["from"], reissued
    # the shard cpu:2 had taken one batch early to run next waits behind the overdue one: given back beside it
    behind = {shard: why for shard, why in reissued.items() if shard not in overdue}
    assert len(behind) <= 1 and all(w["why"] == f"taken to run next on {w['from']}, behind shard {overdue[0]}"
                                    and "cpu:2" in w["from"] for w in behind.values()), reissued
    shard = overdue[0]
    # the stalled copy's own write comes STALL_S after its batch began, long after the job ended: wait for it
    wait_for(lambda: state.summary(job_id).get("refused_duplicate"), STALL_S + 10, what="the stalled copy's write")
    assert state.results(job_id)[shard]["device"] != "cpu:2"  # the second copy wrote
    assert sorted(r["device"] for r in state.batches(job_id) if r["shard"] == shard)[-1] == "cpu:2"  # both ran
    for report in (healthy, stalled):
        cov = report["coverage"]
        assert report["status"] == "done" and cov["ok"] and cov["counted"] == cov["expected"] == 240
        assert cov["duplicated"] == [] and cov["missing"] == []
        assert report["reducer"]["mode"] == "streaming"
    s = state.summary(job_id)
    assert (s["images_done"], s.get("refused_duplicate"), s.get("refused_stale")) == (240, 1, None)  # refused by HSETNX
    assert (healthy["ap"]["evaluator"], stalled["ap"]["evaluator"]) == ("pycocotools", "faster-coco-eval")
    assert stalled["ap"]["stats"] == healthy["ap"]["stats"]  # AP unchanged, to the last bit
