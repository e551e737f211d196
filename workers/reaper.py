"""The reaper: gives back the shard of any lease that expired unreleased (DESIGN.md section 6).

The orchestrator and every device worker run one, so a cluster without a live orchestrator
still heals. A dead holder's shard is re-enqueued at the front of the infer queue within
lease TTL + reap interval (15 s + 5 s by default); the original message, still unacknowledged,
comes back only after the transport's visibility timeout and is then a no-op.
"""
from __future__ import annotations

import json
import logging
import threading
import time

import redis

from tasks.app import enqueue_infer
from tasks.state import FINISHED, JobState
from workers.lease import REGISTRY, LeaseScripts, describe_holder
from workers.stragglers import reissue_stragglers

STRAGGLER_CHECK_S = 1.0  # the orchestrator and the preprocessing pools look for stragglers this often

log = logging.getLogger("workers.reaper")


def give_back(state: JobState, record: dict) -> bool:
    """Re-enqueue the record's shard unless its job finished or the shard already has a result."""
    shard = record.get("shard")
    if not shard:
        return False
    job_id, index = shard["job"], int(shard["shard"])
    if state.status(job_id) in (None, *FINISHED) or state.has_result(job_id, index):
        return False
    enqueue_infer(job_id, index, int(shard["batch"]), redelivered_from=f"{record['host']}/{record['device']}")
    log.warning("gave back shard %d of job %s: the lease of %s expired unreleased (%s)",
                index, job_id, record["device"], describe_holder(record))
    return True


def reap_once(state: JobState, scripts: LeaseScripts | None = None) -> list[dict]:
    """Claim every expired registry record and give its shard back; returns the shards given back."""
    scripts = scripts or LeaseScripts(state.r)
    given = []
    for field in state.r.hkeys(REGISTRY):
        raw = scripts.reap(keys=[REGISTRY, field])
        if raw:
            record = json.loads(raw)
            if give_back(state, record):
                given.append(record["shard"])
    return given


class Reaper:
    """A daemon thread calling reap_once every interval_s, and with `stragglers` the straggler rule every second."""

    def __init__(self, state: JobState, interval_s: float, stragglers: bool = False):
        self.state = state
        self.interval_s = interval_s
        self.stragglers = stragglers
        self.scripts = LeaseScripts(state.r)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-reaper", daemon=True)

    def _run(self) -> None:
        step = min(self.interval_s, STRAGGLER_CHECK_S) if self.stragglers else self.interval_s
        next_reap = time.monotonic() + self.interval_s
        while not self._stop.wait(step):
            try:
                if time.monotonic() >= next_reap - 1e-3:
                    reap_once(self.state, self.scripts)
                    next_reap = time.monotonic() + self.interval_s
                if self.stragglers:
                    reissue_stragglers(self.state)
            except redis.RedisError as exc:
                log.debug("reaper: %s", exc)

    def start(self) -> "Reaper":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
