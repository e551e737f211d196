"""Stragglers: a shard that runs far longer than its device usually takes is given to a second device.

The rule (README, "Stragglers"): a shard in flight is overdue when it has run longer than
STRAGGLER_FACTOR x its expected time + STRAGGLER_SLACK_S, the expected time being the shard's
images x the device's median seconds per image over its recent shards of the job (the whole
job's median while the device has finished none). An overdue shard is put back at the front
of the shared infer queue, once: the next device to be free takes it. Whichever copy writes
first wins; the other's write is a no-op (the fenced HSETNX of write_result.lua), so every
image is still counted exactly once. The shard that device took one batch early to run next
(workers/next_shard.py) waits behind the overdue one: it is put back beside it, once, the same way.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from statistics import median

from tasks.state import JobState

log = logging.getLogger("workers.stragglers")
STRAGGLER_FACTOR = 3.0
STRAGGLER_SLACK_S = 1.0
RECENT_SHARDS = 8  # per device


def seconds_per_image(times: list[dict]) -> tuple[dict[str, float], float | None]:
    """(device -> median seconds per image over its last RECENT_SHARDS shards, the job's median)."""
    by_device: dict[str, list[float]] = defaultdict(list)
    for t in times:
        if t["images"] > 0:
            by_device[t["device"]].append(t["seconds"] / t["images"])
    per_device = {d: median(v[-RECENT_SHARDS:]) for d, v in by_device.items()}
    every = [x for v in by_device.values() for x in v[-RECENT_SHARDS:]]
    return per_device, (median(every) if every else None)


def expected_seconds(device: str, images: int, rates: tuple[dict[str, float], float | None]) -> float | None:
    per_device, job_median = rates
    rate = per_device.get(device, job_median)
    return None if rate is None else rate * images


def reissue_stragglers(state: JobState, now: float | None = None) -> list[tuple[str, int]]:
    """Put every overdue shard in flight back at the front of the queue (once per shard); returns them."""
    now = now or time.time()
    reissued, rates, statuses = [], {}, {}
    for record in state.leases.records():
        shard = record.get("shard")
        if not shard:
            continue
        job_id, index = shard["job"], int(shard["shard"])
        elapsed = now - float(shard["since"])
        if elapsed <= STRAGGLER_SLACK_S:
            continue
        if job_id not in statuses:
            statuses[job_id] = state.status(job_id)
        if statuses[job_id] != "running" or state.has_result(job_id, index):
            continue
        if job_id not in rates:
            rates[job_id] = seconds_per_image(state.shard_times(job_id))
        device = f"{record['host']}/{record['device']}"
        expected = expected_seconds(device, len(state.shard_items(job_id, index)), rates[job_id])
        if expected is None or elapsed <= STRAGGLER_FACTOR * expected + STRAGGLER_SLACK_S:
            continue
        why = f"{device} ran it {elapsed:.1f} s, expected {expected:.1f} s"
        if put_back(state, job_id, index, int(shard["batch"]), device, why, now, "straggler"):
            reissued.append((job_id, index))
        waiting = shard.get("next")
        if waiting and state.status(waiting["job"]) == "running" and not state.has_result(waiting["job"],
                                                                                          int(waiting["shard"])):
            behind = f"taken to run next on {device}, behind shard {index}"
            if put_back(state, waiting["job"], int(waiting["shard"]), int(waiting["batch"]), device, behind, now,
                        "behind a straggler"):
                reissued.append((waiting["job"], int(waiting["shard"])))
    return reissued


def put_back(state: JobState, job_id: str, shard: int, batch: int, device: str, why: str, now: float,
             label: str) -> bool:
    """Enqueue the shard again at the front of the queue, once ever (the job's `reissued` hash says why)."""
    if not state.mark_reissued(job_id, shard, {"from": device, "why": why, "at": now}):
        return False
    state.tasks.infer(job_id, shard, batch, redelivered_from=f"{device} ({label})")
    log.warning("shard %d of job %s given to a second device: %s", shard, job_id, why)
    return True
