"""The reaper: gives back the shard of any lease that expired unreleased (DESIGN.md section 6), and
enqueues again what a broker restart lost (tasks/recovery.py).

The orchestrator and every device worker run one, so a cluster without a live orchestrator
still heals. A dead holder's shard is re-enqueued at the front of the infer queue within
lease TTL + reap interval (15 s + 5 s by default); the original message, still unacknowledged,
comes back only after the transport's visibility timeout and is then a no-op.
"""
from __future__ import annotations

import logging
import time

from tasks.lease import describe_holder, held_shards
from tasks.periodic import Periodic
from tasks.recovery import recover_lost_work
from tasks.state import FINISHED, JobState
from workers.stragglers import reissue_stragglers

STRAGGLER_CHECK_S = 1.0  # the orchestrator and the preprocessing pools look for stragglers this often

log = logging.getLogger("workers.reaper")


def give_back(state: JobState, record: dict) -> bool:
    """Re-enqueue the record's shard, and the next one it had taken early, unless its job finished or the shard
    already has a result; True when something was given back."""
    given = False
    for taken in held_shards(record):
        job_id, index = taken["job"], int(taken["shard"])
        if state.status(job_id) in (None, *FINISHED) or state.has_result(job_id, index):
            continue
        state.tasks.infer(job_id, index, int(taken["batch"]), redelivered_from=f"{record['host']}/{record['device']}")
        log.warning("gave back shard %d of job %s: the lease of %s expired unreleased (%s)",
                    index, job_id, record["device"], describe_holder(record))
        given = True
    return given


def reap_once(state: JobState) -> list[dict]:
    """Claim every expired registry record and give its shard back; returns the shards given back."""
    return [record["shard"] for record in state.leases.claim_expired() if give_back(state, record)]


class Reaper:
    """reap_once every interval_s, and with `stragglers` the straggler rule every second, on a periodic thread."""

    def __init__(self, state: JobState, interval_s: float, stragglers: bool = False):
        self.state = state
        self.interval_s = interval_s
        self.stragglers = stragglers
        self._next_reap = time.monotonic() + interval_s
        step = min(interval_s, STRAGGLER_CHECK_S) if stragglers else interval_s
        self._loop = Periodic("lease reaper", step, self._round, log)

    def _round(self) -> None:
        if time.monotonic() >= self._next_reap - 1e-3:
            reap_once(self.state)
            recover_lost_work(self.state, self.interval_s)
            self._next_reap = time.monotonic() + self.interval_s
        if self.stragglers:
            reissue_stragglers(self.state)

    def start(self) -> Reaper:
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()
