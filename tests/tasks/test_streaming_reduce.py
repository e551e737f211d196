"""The streaming reducer: results parsed as they are written, one reducer per job, the one-go reducer as a net."""
from __future__ import annotations

import gc
import threading
import time

import pytest

from reduce_support import FENCE, create_job, perfect_payload
from tasks.reduce import reduce_job
from tasks.shards import read_images
from tasks.streaming import REDUCER_TTL_S, ResultStream, follow_job, reduce_when_free


@pytest.fixture
def job(redis_url, selftest_set):
    state, shards = create_job(redis_url, selftest_set, "s1", 2)
    state.set_status("s1", "running")
    return state, selftest_set[0], shards


def write(state, ann, shards, i):
    state.write_result("s1", i, perfect_payload(ann, shards[i]), FENCE, 1)


def test_the_stream_parses_each_result_once_as_it_arrives(job, monkeypatch):
    state, ann, shards = job
    stream = ResultStream(state, "s1")
    assert stream.poll() == 0
    write(state, ann, shards, 3)
    write(state, ann, shards, 0)
    assert stream.poll() == 2 and set(stream.results) == {0, 3}
    fetched = []
    real_hmget = state.r.hmget
    monkeypatch.setattr(state.r, "hmget", lambda key, fields: fetched.append(list(fields)) or real_hmget(key, fields))
    assert stream.poll() == 2 and fetched == []  # nothing new: nothing fetched
    write(state, ann, shards, 1)
    assert stream.poll() == 3 and fetched == [["1"]]  # only the new one
    assert stream.results[1]["image_ids"] == [im["id"] for im in shards[1]]


@pytest.mark.parametrize("frozen_before", [False, True], ids=["heap-not-frozen", "start-up-heap-frozen"])
def test_following_a_job_gives_the_one_go_report(job, frozen_before):
    state, ann, shards = job
    frozen = []
    gc.freeze() if frozen_before else gc.unfreeze()  # a worker process freezes its start-up heap when ready
    before = gc.get_freeze_count()

    def writer():
        for i in range(len(shards)):
            time.sleep(0.15)
            frozen.append(gc.get_freeze_count())  # the follower's heap, out of the collector's full passes
            write(state, ann, shards, i)
    thread = threading.Thread(target=writer)
    t0 = time.time()
    thread.start()
    report = follow_job(state, "s1")
    thread.join()
    after = gc.get_freeze_count()
    gc.unfreeze()
    assert min(frozen) > before  # the follower's heap, the parsed annotation file with it, frozen while following
    assert (after > 0) == frozen_before  # given back after, but a start-up heap frozen before stays frozen
    assert report["reducer"]["mode"] == "streaming" and report["status"] == "done"
    assert report["timestamps"]["reduce_start"] >= t0 + 0.15 * len(shards)  # after the last shard, not before
    assert report["coverage"]["ok"] and report["coverage"]["counted"] == len(read_images(ann))
    again = reduce_job(state, "s1")
    assert again["reducer"]["mode"] == "one go"
    assert again["ap"]["stats"] == report["ap"]["stats"] and again["coverage"] == report["coverage"]
    assert report["ap"]["stats"]["AP"] == pytest.approx(1.0, abs=1e-12)


def test_the_reducer_task_waits_for_a_live_follower_then_takes_over_when_it_dies(job):
    state, ann, shards = job
    for i in range(len(shards)):
        write(state, ann, shards, i)
    follower = state.reducer_lease("s1", 1.0)
    assert follower.try_acquire()  # the follower process died right after: no heartbeat, no release
    t0 = time.time()
    report = reduce_when_free(state, "s1", poll_s=0.05)
    assert time.time() - t0 >= 0.5  # it waited for the lease to expire
    assert report["reducer"]["mode"] == "one go" and state.status("s1") == "done"


def test_a_finished_job_is_not_reduced_twice(job):
    state, ann, shards = job
    for i in range(len(shards)):
        write(state, ann, shards, i)
    lease = state.reducer_lease("s1", REDUCER_TTL_S)
    assert lease.try_acquire()
    lease.start_heartbeat()
    done = {}
    waiter = threading.Thread(target=lambda: done.update(report=reduce_when_free(state, "s1", poll_s=0.05)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # waits while the follower holds the job
    report = follow_job(state, "s1")
    lease.release()
    waiter.join(10)
    assert done["report"]["reducer"] == report["reducer"] and done["report"]["timestamps"] == report["timestamps"]
    assert not state.reducer_held("s1")
