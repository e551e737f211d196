"""The reaper gives back the shard of a lease that expired unreleased, at the front of the queue, once."""
from __future__ import annotations

import json
import time

import pytest

from tasks.lease import DeviceLease
from tasks.params import JobParams
from tasks.state import JobState
from workers.reaper import reap_once

SHARD = [{"id": 1, "file": "1.jpg", "w": 10, "h": 10}]


@pytest.fixture
def state(redis_url):
    s = JobState.open(redis_url)
    s.create(JobParams(job_id="j", annotation="a", image_dir="i", backend="sim:1ms", batch=8), [SHARD, SHARD])
    s.set_status("j", "running")
    return s


def infer_messages(state):
    """Messages on the infer queue: (priority list, kwargs) for each."""
    out = []
    for key in state.r.keys(state.keys.queue("infer") + "*"):
        for raw in state.r.lrange(key, 0, -1):
            msg = json.loads(raw)
            out.append((key, msg["headers"]["kwargsrepr"]))
    return out


def dead_holder(state, shard, device="cpu:0"):
    lease = DeviceLease(state.r, device, 0.1, host="h", pid=7)
    lease.try_acquire()
    lease.mark({"job": "j", "shard": shard, "batch": 8, "since": time.time()})
    time.sleep(0.15)
    return lease


def test_expired_lease_gives_its_shard_back_at_the_front(state):
    dead_holder(state, 1)
    given = reap_once(state)
    assert given == [{"job": "j", "shard": 1, "batch": 8, "since": pytest.approx(time.time(), abs=5)}]
    (key, kwargs), = infer_messages(state)
    assert key == state.keys.queue("infer")  # priority 0: polled before the normal priority list
    assert "'shard': 1" in kwargs and "'redelivered_from': 'h/cpu:0'" in kwargs
    assert reap_once(state) == [] and not state.r.hexists(state.keys.leases(), state.keys.lease("h", "cpu:0"))


def test_live_leases_and_finished_shards_are_left_alone(state):
    live = DeviceLease(state.r, "cpu:1", 30, host="h", pid=8)
    live.try_acquire()
    live.mark({"job": "j", "shard": 0, "batch": 8, "since": 0})
    dead_holder(state, 1)
    fence = state.keys.fence(state.keys.lease("h", "cpu:0"))
    state.r.set(fence, 1)
    state.write_result("j", 1, {"image_ids": [1], "unreadable": {}, "results": []}, fence, 1)
    assert reap_once(state) == []  # shard 1 already has its result
    assert infer_messages(state) == [] and state.r.hexists(state.keys.leases(), live.key)


def test_nothing_given_back_for_a_finished_job(state):
    dead_holder(state, 0)
    state.set_status("j", "cancelled")
    assert reap_once(state) == [] and infer_messages(state) == []
