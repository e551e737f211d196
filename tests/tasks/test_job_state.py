"""Job state in a real Redis: the fenced, idempotent result write (write_result.lua) and shard bookkeeping."""
from __future__ import annotations

import pytest

from tasks.params import JobParams
from tasks.state import JobState

FENCE = "lease:host:cpu:0:fence"


@pytest.fixture
def state(redis_url):
    s = JobState.open(redis_url)
    params = JobParams(job_id="j1", annotation="a.json", image_dir="img", backend="groundtruth", batch=2)
    shards = [[{"id": 1, "file": "1.jpg", "w": 10, "h": 10}, {"id": 2, "file": "2.jpg", "w": 10, "h": 10}],
              [{"id": 3, "file": "3.jpg", "w": 10, "h": 10}]]
    s.create(params, shards)
    return s


def payload(ids):
    return {"image_ids": ids, "unreadable": {}, "results": [{"image_id": i} for i in ids]}


def test_first_write_wins_and_is_counted_once(state):
    state.r.set(FENCE, 1)
    assert state.write_result("j1", 0, payload([1, 2]), FENCE, 1) == ("written", 1)
    assert state.write_result("j1", 0, payload([1, 2, 2]), FENCE, 1) == ("duplicate", 1)
    assert state.write_result("j1", 0, payload([1, 2]), FENCE, 1) == ("written", 1)  # a replay: counted once
    summary = state.summary("j1")
    assert (summary["shards_done"], summary["images_done"]) == (1, 2)
    assert (summary["refused_duplicate"], summary.get("refused_stale")) == (1, None)  # the replay is no refusal
    assert state.results("j1")[0]["image_ids"] == [1, 2]  # the duplicate changed nothing


def test_stale_fencing_number_is_rejected(state):
    state.r.set(FENCE, 5)  # the device was leased again after our acquisition (fence 4)
    assert state.write_result("j1", 1, payload([3]), FENCE, 4) == ("stale", 0)
    assert not state.has_result("j1", 1)
    assert (state.summary("j1")["refused_stale"], state.summary("j1").get("refused_duplicate")) == (1, None)
    assert state.write_result("j1", 1, payload([3]), FENCE, 5) == ("written", 1)


def test_shards_without_result_is_what_resume_needs(state):
    state.r.set(FENCE, 1)
    assert state.shards_without_result("j1") == [0, 1]
    state.write_result("j1", 1, payload([3]), FENCE, 1)
    assert state.shards_without_result("j1") == [0]


def test_job_record_round_trips(state):
    assert state.params("j1").batch == 2
    assert state.all_shards("j1")[1][0]["id"] == 3
    assert state.status("j1") == "queued" and state.job_ids() == ["j1"]
    assert state.claim_reduce("j1") and not state.claim_reduce("j1")
    state.fail("j1", "boom")
    state.fail("j1", "second reason")  # a finished job keeps its first reason
    assert state.summary("j1")["error"] == "boom"
