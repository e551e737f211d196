"""The sim backend's options (what the worker loads, a stalled call) and the straggler rule."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tasks.params import JobParams
from tasks.shards import plan_shards, read_images
from tasks.state import JobState
from workers.backends import check_spec, create_backend
from workers.backends.base import InferenceBatch
from workers.backends.sim import parse_sim
from workers.inference import run_shard
from workers.stragglers import STRAGGLER_FACTOR, STRAGGLER_SLACK_S, reissue_stragglers, seconds_per_image


def test_sim_spec_options():
    o = parse_sim("950ms,load=none,stall=30s@cpu:3#2")
    assert (o.latency_s, o.load, o.stall_s, o.stall_device, o.stall_call) == (0.95, "none", 30.0, "cpu:3", 2)
    assert parse_sim("") == parse_sim("113ms") and parse_sim("1s,stall=500ms").stall_device == ""
    for bad in ("950ms,load=all", "950ms,stall=soon", "950ms,turbo", "950ms,slow=2@cpu:3"):
        with pytest.raises(ValueError, match=r"\(--backend\)$"):
            check_spec(f"sim:{bad}")
    assert create_backend("sim:1ms,load=pixels").needs_pixels
    none = create_backend("sim:1ms,load=none")
    assert not none.needs_pixels and not none.reads_images and none.describe()["load"] == "none"
    assert create_backend("sim:500ms,slow=2@cpu:4-7", device="cpu:7").latency_s == 1.0
    assert create_backend("sim:500ms,slow=2x@cpu:4-7", device="cpu:3").latency_s == 0.5
    assert create_backend("sim:500ms,slow=2@cpu:4-7", device="npu:5").latency_s == 0.5


def test_stall_hits_one_device_once(selftest_set):
    ann, _ = selftest_set
    batch = InferenceBatch(images=None, clip_hw=np.zeros((1, 2), np.float32), metas=[],
                           image_ids=[], job={"annotation": str(ann)})
    other = create_backend("sim:1ms,stall=300ms@cpu:3#1", device="cpu:0")
    stalled = create_backend("sim:1ms,stall=300ms@cpu:3#1", device="cpu:3")
    assert other.describe().get("stall") is None
    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        stalled.infer(batch)
        seconds.append(time.perf_counter() - t0)
    assert seconds[1] >= 0.3 and seconds[0] < 0.1 and seconds[2] < 0.1


def run_all(runner, ann, img, backend_spec, tmp_path, job_id):
    params = JobParams(job_id=job_id, annotation=str(ann), image_dir=str(img), backend=backend_spec, batch=4,
                       size_mode="static", static_size=320, store=str(tmp_path / "store"))
    (shard,) = plan_shards(read_images(ann), 4, 1, "static", 320, shard_size=100)
    runner.state.create(params, [shard])
    return run_shard(runner, create_backend(backend_spec), params, 0, shard)


def test_load_none_reads_no_file_and_answers_the_same(runner, selftest_set, tmp_path):
    ann, img = selftest_set
    meta = run_all(runner, ann, img, "sim:1ms", tmp_path, "m")
    nothing = run_all(runner, ann, tmp_path / "no_such_folder", "sim:1ms,load=none", tmp_path, "n")
    assert nothing["unreadable"] == {} and sorted(nothing["image_ids"]) == sorted(meta["image_ids"])
    assert sorted(map(json.dumps, nothing["results"])) == sorted(map(json.dumps, meta["results"]))
    assert nothing["store"] == {"hits": 0, "misses": 0, "recomputed": 0}


def test_seconds_per_image_uses_each_device_then_the_job():
    times = [{"device": "h/a", "images": 8, "seconds": 0.8}, {"device": "h/a", "images": 16, "seconds": 1.6},
             {"device": "h/b", "images": 8, "seconds": 4.0}]
    per_device, job = seconds_per_image(times)
    assert per_device == {"h/a": pytest.approx(0.1), "h/b": pytest.approx(0.5)} and job == pytest.approx(0.1)


def test_an_overdue_shard_is_reissued_once(redis_url, selftest_set, monkeypatch):
    ann, img = selftest_set
    state = JobState.open(redis_url)
    images = read_images(ann)
    shards = [images[:4], images[4:8], images[8:]]
    state.create(JobParams(job_id="j", annotation=str(ann), image_dir=str(img), backend="sim:100ms", batch=4),
                 shards)
    state.set_status("j", "running")
    for _ in range(3):
        state.record_shard_time("j", "h/cpu:0", 4, 0.4)  # 0.1 s per image: a 4-image shard takes 0.4 s
    sent = []

    class Sender:  # what the straggler rule sends, instead of a broker's queue
        def infer(self, *a, **k):
            sent.append((a, k))
    monkeypatch.setattr(state, "_enqueuer", Sender())
    now = time.time()
    deadline = STRAGGLER_FACTOR * 0.4 + STRAGGLER_SLACK_S

    def in_flight(device, shard, elapsed):
        state.r.hset(state.keys.leases(), state.keys.lease("h", device), json.dumps({
            "token": "t", "host": "h", "device": device, "pid": 1, "since": now - 100,
            "shard": {"job": "j", "shard": shard, "batch": 4, "since": now - elapsed}}))
    in_flight("cpu:0", 0, deadline - 0.1)  # slow but not overdue
    in_flight("cpu:1", 1, deadline + 0.1)  # overdue, judged by the job's median (cpu:1 has no history)
    assert reissue_stragglers(state, now) == [("j", 1)]
    assert sent == [(("j", 1, 4), {"redelivered_from": "h/cpu:1 (straggler)"})]
    assert reissue_stragglers(state, now + 5) == [("j", 0)]  # later, shard 0 is overdue too; shard 1 not again
    assert state.reissued("j")[1]["from"] == "h/cpu:1"
    state.r.hdel(state.keys.job_part("j", "reissued"), "0")
    state.r.hset(state.keys.job_part("j", "results"), "0", "{}")
    assert reissue_stragglers(state, now + 5) == []  # a shard with a result is never reissued
    state.set_status("j", "cancelled")
    state.r.delete(state.keys.job_part("j", "reissued"))
    assert reissue_stragglers(state, now + 5) == []  # nor one of a job that is not running
