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


def test_a_result_with_non_finite_numbers_is_read_back_as_written(state):
    """orjson writes NaN as null: a backend's non-finite answer is written with json instead, and read back."""
    import math
    nan = {"image_id": 3, "category_id": 1, "bbox": [float("nan"), 0.0, 1.0, float("inf")], "score": 0.5}
    payload = {"image_ids": [3], "unreadable": {}, "results": [nan], "finite": False}
    assert state.write_result("j1", 1, payload, FENCE, 0)[0] == "written"
    back = state.results("j1")[1]["results"][0]
    assert math.isnan(back["bbox"][0]) and back["bbox"][3] == float("inf") and back["score"] == 0.5
    fine = {"image_ids": [1, 2], "unreadable": {}, "results": [{**nan, "bbox": [0.1, 0.2, 3.0, 4.0]}]}
    assert state.write_result("j1", 0, fine, FENCE, 0)[0] == "written"
    assert state.results("j1")[0]["results"][0]["bbox"] == [0.1, 0.2, 3.0, 4.0]
