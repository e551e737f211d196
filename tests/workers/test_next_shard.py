"""Cross-shard prefetch on real workers: a device loads its next shard's first batch while the last batch of the
one before runs and starts it right behind that batch, and a worker killed while holding that next shard loses
neither."""
from __future__ import annotations

import json
import os
import signal
import socket

import pytest
from real_processes import wait_for
from test_worker_failover import finish, submit

from tasks.state import JobState

HOST = socket.gethostname()


def lease_record(state, device):
    raw = state.r.get(state.keys.lease(HOST, device))
    return json.loads(raw) if raw else None


@pytest.mark.slow
def test_each_shard_after_the_first_starts_on_tensors_loaded_ahead(redis_url, processes, selftest_set):
    ann, img = selftest_set
    state = JobState.open(redis_url)
    processes.preprocess_pool(redis_url)
    backend = "sim:400ms,load=pixels"  # the next message is asked for at the last batch: 0.4 s to come and load
    processes.wait_ready(processes.device_worker(redis_url, "cpu:7", "--backend", backend))
    proc, job = submit(processes, redis_url, ann, img, "--backend", backend, "--shard-size", "3")
    report = finish(proc, state, job)
    assert report["ap"]["stats"]["AP"] == 1.0
    firsts = {}
    for record in sorted(state.batches(job), key=lambda r: r["t_start"]):
        firsts.setdefault(record["shard"], record)
    order = sorted(firsts.values(), key=lambda r: r["t_start"])
    ahead = [r["shard"] for r in order[1:] if r.get("ahead")]
    print(f"\n{len(ahead)} of {len(order) - 1} shards after the first started on tensors loaded ahead; "
          f"their first batch waited {max((r['wait_s'] for r in order[1:] if r.get('ahead')), default=0):.3f} s "
          f"at most, the others {[round(r['wait_s'], 3) for r in order[1:] if not r.get('ahead')]}")
    assert not order[0].get("ahead")  # nothing ran before it
    assert len(ahead) == len(order) - 1 >= 2, order
    # and each was put on the device behind the last batch of the shard before, ahead of its own task's start
    results = state.results(job)
    chained = [r["shard"] for r in order[1:] if r.get("chained") and r["t_start"] < results[r["shard"]]["t_start"]]
    calls = sorted(state.batches(job), key=lambda r: r["t_start"])
    idle = [round(b["t_start"] - a["t_end"], 4) for a, b in zip(calls, calls[1:]) if a["shard"] != b["shard"]]
    print(f"{len(chained)} of them started on the device before their task did; device idle between shards {idle} s")
    assert chained == ahead, order
    assert sum(r["size"] for r in state.batches(job)) == report["coverage"]["counted"]  # no shard ran twice


@pytest.mark.slow
def test_a_worker_killed_holding_its_next_shard_gives_back_both(redis_url, processes, selftest_set):
    ann, img = selftest_set
    state = JobState.open(redis_url)
    processes.preprocess_pool(redis_url)
    backend = "sim:150ms,stall=60s@cpu:8#1"  # the victim's second call (its first shard's last batch) hangs
    victim = processes.device_worker(redis_url, "cpu:8", "--backend", backend, name="victim")
    processes.wait_ready(victim)
    proc, job = submit(processes, redis_url, ann, img, "--backend", backend)

    def holding_next():
        rec = lease_record(state, "cpu:8")
        shard = (rec or {}).get("shard") or {}
        return shard if shard.get("job") == job and shard.get("next") else None
    held = wait_for(holding_next, 60, poll_s=0.05, what="the victim to take its next shard early")
    running, taken = int(held["shard"]), int(held["next"]["shard"])
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    survivor = processes.device_worker(redis_url, "cpu:9", "--backend", backend, name="survivor")
    report = finish(proc, state, job)

    results = state.results(job)
    for shard in (running, taken):
        assert results[shard]["pid"] == survivor.pid, (shard, results[shard]["device"])
        assert sorted(results[shard]["image_ids"]) == sorted(im["id"] for im in state.all_shards(job)[shard])
    assert report["ap"]["stats"]["AP"] == 1.0 and report["coverage"]["duplicated"] == []
    lines = [line for p in processes.procs for line in processes.log(p).splitlines()]
    # each came back once through the reaper (the lease expired) or the straggler rule (overdue, or behind the
    # overdue one), whichever saw it first; a second copy's write, if any, is refused by the fence or HSETNX
    for shard in (running, taken):
        back = [line for line in lines if f"gave back shard {shard} of job {job}" in line
                or f"shard {shard} of job {job} given to" in line]
        assert 1 <= len(back) <= 2, (shard, lines[-20:])
