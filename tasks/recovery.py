"""Work a broker restart lost: shards of a running job that nothing will run, a reduce that nobody will do.

Redis writes its append-only file every second (appendfsync everysec): a crash loses up to the last second
of writes, among them a queued message, a lease record, a shard result or the reduce message. A shard is
unaccounted for when it has no result, no message waits for it in the infer queue and no live device lease
marks it (as running, or as taken to run next: workers/next_shard.py); a job's reduce when every shard has a result, the job is not finished, no reduce message waits
and no reducer holds its lease; a shard's preprocessing (a job sent to a preprocessing pool) when the shard
has no result, no device runs it, no preprocessing message waits for it and no pool took it up (a pool notes
each shard it starts: one that dies mid-shard leaves its images to the device, which preprocesses what the
store lacks). A lost preprocessing message never costs an image, only the devices' time. What two checks in a row (at least a reaper interval apart, the checks
shared by every reaper through Redis) find unaccounted for is lost, and enqueued again, once per check.
A late original still counts once: results are written once and fenced (tasks/lua/write_result.lua).
`resume` uses the same accounting for a job whose orchestrator died.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from tasks.app import INFER_QUEUE, PREPROCESS_QUEUE, REDUCE_QUEUE
from tasks.state import JobState

log = logging.getLogger("tasks.recovery")
RECENT_JOBS = 50  # how far back in the job list the check looks


@dataclass(frozen=True)
class Accounting:
    """Where each shard of a job without a result is, now."""

    missing: list[int]  # shards without a result
    queued: set[int]  # ... with an infer message waiting
    in_flight: dict[int, str]  # ... that a device holding a live lease runs or took to run next (-> host/device)
    reduce_queued: bool
    preprocess_queued: set[int] = frozenset()  # ... with a preprocessing message waiting
    preprocess_taken: set[int] | None = None  # ... that a pool took up; None: the job has no pool preprocessing

    @property
    def unaccounted(self) -> list[int]:
        return [s for s in self.missing if s not in self.queued and s not in self.in_flight]

    @property
    def preprocess_unaccounted(self) -> list[int]:
        if self.preprocess_taken is None:
            return []
        return [s for s in self.missing
                if s not in self.in_flight and s not in self.preprocess_queued and s not in self.preprocess_taken]


def _shards(tasks, name: str) -> set[int]:
    return {int(t.kwargs["shard"]) for t in tasks if t.name == name and "shard" in t.kwargs}


def account(state: JobState, job_id: str) -> Accounting:
    queued = _shards(state.queued([INFER_QUEUE], job_id), "evaluator.infer")
    pool = state.wants_preprocessing(job_id)
    return Accounting(state.shards_without_result(job_id), queued, state.leases.taken(job_id),
                      bool(state.queued([REDUCE_QUEUE], job_id)),
                      _shards(state.queued([PREPROCESS_QUEUE], job_id), "evaluator.preprocess") if pool else set(),
                      state.preprocessing_taken(job_id) if pool else None)


def reduce_unaccounted(state: JobState, job_id: str, accounting: Accounting) -> bool:
    return not accounting.missing and not accounting.reduce_queued and not state.reducer_held(job_id)


def recover_job(state: JobState, job_id: str, min_age_s: float) -> list[int | str]:
    """Re-enqueue what this check and the one before (at least `min_age_s` ago) both found unaccounted for."""
    accounting = account(state, job_id)
    shards, reduce = accounting.unaccounted, reduce_unaccounted(state, job_id, accounting)
    preprocess = accounting.preprocess_unaccounted
    before, reduce_before, preprocess_before, t_before = state.suspects(job_id)
    state.set_suspects(job_id, shards, reduce, preprocess)
    if t_before is None or time.time() - t_before < min_age_s:
        return []
    lost_shards = [s for s in shards if s in before]
    lost_preprocess = [s for s in preprocess if s in preprocess_before]
    batch = state.params(job_id).batch
    for shard in lost_preprocess:
        state.tasks.preprocess(job_id, shard, batch)  # before the shard's own message: the pool may still be ahead
        log.warning("re-enqueued the preprocessing of shard %d of job %s: no message, no pool on it (lost by the "
                    "broker)", shard, job_id)
    lost: list[int | str] = [*lost_shards, *(f"preprocess {s}" for s in lost_preprocess)]
    for shard in lost_shards:
        state.tasks.infer(job_id, shard, batch, redelivered_from="lost message")
        log.warning("re-enqueued shard %d of job %s: no result, no message, no device on it (lost by the broker)",
                    shard, job_id)
    if reduce and reduce_before:
        state.allow_reduce_again(job_id)
        if state.claim_reduce(job_id):
            state.tasks.reduce(job_id)
            log.warning("re-enqueued the reduce of job %s: every shard has a result and nobody reduces it", job_id)
            lost.append("reduce")
    return lost


def recover_lost_work(state: JobState, interval_s: float) -> dict[str, list[int | str]]:
    """One cluster-wide check per `interval_s` (whichever reaper claims it): {job: what was re-enqueued}."""
    if not state.claim_recovery_round(interval_s * 0.9):
        return {}
    found = {}
    for job_id in state.enqueued_running_jobs(RECENT_JOBS):
        lost = recover_job(state, job_id, interval_s * 0.9)
        if lost:
            found[job_id] = lost
    return found
