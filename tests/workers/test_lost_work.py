"""Lost work (a broker restart dropped a message): found by two checks in a row, enqueued again once, nothing else."""
from __future__ import annotations

import time

import pytest

from tasks.app import INFER_QUEUE, PREPROCESS_QUEUE, REDUCE_QUEUE
from tasks.lease import DeviceLease
from tasks.params import JobParams
from tasks.preprocessing import preprocess_shard
from tasks.recovery import recover_lost_work
from tasks.state import JobState

SHARD = [{"id": 1, "file": "1.jpg", "w": 10, "h": 10}]
INTERVAL_S = 0.2


@pytest.fixture
def state(redis_url):
    s = JobState.open(redis_url)
    s.create(JobParams(job_id="j", annotation="a", image_dir="i", backend="sim:1ms", batch=8), [SHARD] * 4)
    s.set_status("j", "running")
    s.note_enqueued("j")
    return s


def queued_shards(state) -> list[int]:
    return sorted(int(t.kwargs["shard"]) for t in state.queued([INFER_QUEUE], "j"))


def write(state, shard: int) -> None:
    fence = state.keys.fence(state.keys.lease("h", "cpu:9"))
    state.r.set(fence, 1)
    assert state.write_result("j", shard, {"image_ids": [1], "unreadable": {}, "results": []}, fence, 1)[0] \
        == "written"


def check(state) -> dict:
    """One check, at least an interval after the one before (the claim that makes it cluster-wide expires)."""
    time.sleep(INTERVAL_S * 1.1)
    return recover_lost_work(state, INTERVAL_S)


def test_a_shard_with_no_result_no_message_and_no_device_is_enqueued_again_once(state):
    write(state, 0)  # shard 0: has its result
    state.tasks.infer("j", 1, 8)  # shard 1: its message waits
    live = DeviceLease(state.r, "cpu:1", 30, host="h", pid=8)  # shard 2: a live device runs it
    live.try_acquire()
    live.mark({"job": "j", "shard": 2, "batch": 8, "since": time.time()})
    # shard 3: nothing anywhere (its message was lost)
    assert check(state) == {}  # first sighting: only suspected
    assert check(state) == {"j": [3]}
    assert queued_shards(state) == [1, 3]
    (message,) = [t for t in state.queued([INFER_QUEUE], "j") if t.kwargs["shard"] == 3]
    assert message.kwargs["redelivered_from"] == "lost message"
    assert check(state) == {} and check(state) == {}  # now it waits in the queue: never twice
    assert queued_shards(state) == [1, 3]


def test_a_shard_that_turns_up_between_two_checks_is_left_alone(state):
    for shard in (0, 1, 2):
        write(state, shard)
    assert check(state) == {}  # shard 3 suspected
    state.tasks.infer("j", 3, 8)  # ... then its message is seen (it was being sent)
    assert check(state) == {} and check(state) == {}
    assert queued_shards(state) == [3]


def test_two_reapers_checking_at_once_enqueue_it_once(state, redis_url):
    for shard in (0, 1, 2):
        write(state, shard)
    other = JobState.open(redis_url)
    assert check(state) == {}
    time.sleep(INTERVAL_S * 1.1)
    found = [recover_lost_work(s, INTERVAL_S) for s in (state, other)]
    assert sorted(map(str, found)) == ["{'j': [3]}", "{}"]  # only one of them held this interval's check
    assert queued_shards(state) == [3]


def test_a_lost_reduce_is_enqueued_again_once(state):
    for shard in range(4):
        write(state, shard)
    assert state.claim_reduce("j")  # the last writer claimed it, and its message was lost
    assert check(state) == {}
    assert check(state) == {"j": ["reduce"]}
    assert [t.kwargs for t in state.queued([REDUCE_QUEUE], "j")] == [{"job_id": "j"}]
    assert check(state) == {} and len(state.queued([REDUCE_QUEUE], "j")) == 1


def test_a_reducer_at_work_and_jobs_not_fully_enqueued_or_finished_are_left_alone(state, redis_url):
    for shard in range(4):
        write(state, shard)
    lease = state.reducer_lease("j", 30)
    assert lease.try_acquire()  # a follower streams it
    assert check(state) == {} and check(state) == {}
    lease.release()
    state.set_status("j", "done")
    assert check(state) == {} and check(state) == {}
    fresh = JobParams(job_id="k", annotation="a", image_dir="i", backend="sim:1ms", batch=8)
    state.create(fresh, [SHARD])
    state.set_status("k", "running")  # submit is still sending its messages: no t_enqueued yet
    assert check(state) == {} and check(state) == {}
    assert state.queued([INFER_QUEUE, REDUCE_QUEUE]) == []


def preprocess_queued(state, job_id: str) -> list[int]:
    return sorted(int(t.kwargs["shard"]) for t in state.queued([PREPROCESS_QUEUE], job_id))


def test_lost_preprocessing_is_enqueued_again_once_and_only_where_it_can_still_help(state, tmp_path):
    state.set_status("j", "done")  # the fixture's job is not the point here
    params = JobParams(job_id="p", annotation="a", image_dir=str(tmp_path), backend="sim:1ms", batch=8,
                       store=str(tmp_path / "store"))
    state.create(params, [SHARD] * 5)
    state.set_status("p", "running", preprocess_tasks=5)
    state.note_enqueued("p")
    for shard in range(5):
        state.tasks.infer("p", shard, 8)  # every inference message is there: only preprocessing was lost
    fence = state.keys.fence(state.keys.lease("h", "cpu:9"))
    state.r.set(fence, 1)
    state.write_result("p", 0, {"image_ids": [1], "unreadable": {}, "results": []}, fence, 1)  # 0: done
    state.tasks.preprocess("p", 1, 8)  # 1: its preprocessing message waits
    (tmp_path / "1.jpg").write_bytes(b"not an image")
    assert preprocess_shard(state, "p", 2)["unreadable"] == 1  # 2: a pool took it up (what it found does not matter)
    live = DeviceLease(state.r, "cpu:1", 30, host="h", pid=8)  # 3: a device runs it, preprocessing as it goes
    live.try_acquire()
    live.mark({"job": "p", "shard": 3, "batch": 8, "since": time.time()})
    # 4: its preprocessing message was lost
    assert check(state) == {}  # first sighting: only suspected
    assert check(state) == {"p": ["preprocess 4"]}
    assert preprocess_queued(state, "p") == [1, 4]
    assert check(state) == {} and check(state) == {}  # now it waits: never twice
    assert preprocess_queued(state, "p") == [1, 4]
    assert sorted(int(t.kwargs["shard"]) for t in state.queued([INFER_QUEUE], "p")) == list(range(5))


def test_a_job_sent_to_no_preprocessing_pool_gets_no_preprocessing(state):
    for shard in range(4):
        state.tasks.infer("j", shard, 8)
    assert check(state) == {} and check(state) == {}
    assert state.queued([PREPROCESS_QUEUE]) == []
