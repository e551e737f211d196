"""A job's lifecycle from the orchestrator's side: submit it, wait for it, follow it to its report."""
from __future__ import annotations

import json
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.cluster import ClusterError
from orchestrator.manifest import build_manifest
from orchestrator.progress import JobProgress
from orchestrator.reporting.data import collect
from orchestrator.reporting.writer import publish
from tasks.outage import BROKER_TIMEOUT_S, BROKER_UNREACHABLE_EXIT, BrokerUnreachable, Outage
from tasks.params import JobParams
from tasks.settings import TIMINGS, ClusterTimings
from tasks.shards import plan_shards
from tasks.state import FINISHED, JobState
from workers.reaper import Reaper


class JobFailed(RuntimeError):
    """The job ended failed or cancelled; the message says why."""


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def submit_job(state: JobState, params: JobParams, images: list[dict], n_devices: int,
               manifest: dict | None = None, preprocess_first: bool = True) -> int:
    """Plan shards, record the job, enqueue preprocessing (unless the store is known warm) then inference."""
    shards = plan_shards(images, params.batch, n_devices, params.size_mode, params.static_size, params.shard_size)
    state.create(params, shards)
    fields = {"preprocess_tasks": len(shards) if preprocess_first else 0, "t_running": time.time()}
    if manifest:
        fields["manifest"] = json.dumps(manifest)
    state.set_status(params.job_id, "running", **fields)  # before any task can finish it
    state.tasks.job(params.job_id, len(shards), params.batch, preprocess_first=preprocess_first)
    state.note_enqueued(params.job_id)  # from now on the reapers look for its lost messages
    return len(shards)


def wait_job(state: JobState, job_id: str, on_progress=None, check_alive=None, poll_s: float = 0.25,
             timeout_s: float | None = None, outage: Outage | None = None) -> dict:
    """Poll until the job finishes; returns its report (raises JobFailed when there is none). A broker outage
    is waited out by `outage` (BrokerUnreachable when it lasts too long), `check_alive` still called meanwhile."""
    outage = outage or Outage(tick=check_alive)
    deadline = time.time() + timeout_s if timeout_s else None
    while True:
        summary = outage.call(lambda: state.summary(job_id))
        if on_progress:
            on_progress(summary)
        status = summary.get("status")
        if status in FINISHED:
            report = outage.call(lambda: state.report(job_id))
            if report is None:
                raise JobFailed(f"job {job_id} {status}: {summary.get('error', 'no reason recorded')}")
            return report
        if check_alive:
            check_alive()
        if deadline and time.time() > deadline:
            raise JobFailed(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)


def live_devices(state: JobState, warn: bool = False) -> int:
    """Devices whose lease is held right now on this broker; with `warn`, one line on stderr when there are none."""
    n = state.leases.held_count()
    if warn and n == 0:
        print("warning: no device worker holds a lease on this broker yet; the job waits for one", file=sys.stderr)
    return n


@dataclass(frozen=True)
class Watcher:
    """How a command follows its jobs: the reaper's pace, the embedded cluster's liveness check, a time limit."""

    timings: ClusterTimings = TIMINGS
    check_alive: Callable[[], None] | None = None
    timeout_s: float | None = None
    broker_timeout_s: float = BROKER_TIMEOUT_S

    def outage(self) -> Outage:
        """How this command waits through a broker outage: one line when it begins and ends, the embedded
        cluster supervised meanwhile (its Redis restarted there)."""
        return Outage(self.broker_timeout_s, say=lambda line: print(line, file=sys.stderr), tick=self.check_alive)

    def wait(self, state: JobState, job_id: str, outage: Outage | None = None) -> dict:
        """Progress on stderr and a reaper running until the job ends; its report (JobFailed when none)."""
        outage = outage or self.outage()
        n_images = int(outage.call(lambda: state.summary(job_id)).get("n_images", 0))
        reaper = Reaper(state, self.timings.reap_interval_s, stragglers=True).start()
        try:
            with JobProgress(job_id, n_images) as progress:
                outage.say, outage.waiting = progress.say, progress.broker_wait
                return wait_job(state, job_id, progress.update, self.check_alive, timeout_s=self.timeout_s,
                                outage=outage)
        finally:
            reaper.stop()

    def follow(self, state: JobState, job_id: str, run_dir: str | Path) -> int:
        """Wait for the job, then its table on stdout and its run folder: exit code 0 when it is done, 1 when it
        failed, BROKER_UNREACHABLE_EXIT when the broker stayed away past --broker-timeout (the job resumable)."""
        outage = self.outage()
        try:
            self.wait(state, job_id, outage)
            report, batches, results = outage.call(lambda: collect(state, job_id))
        except (JobFailed, ClusterError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except BrokerUnreachable as exc:
            print(f"error: {exc}; the job stays resumable: python -m orchestrator resume {job_id}"
                  + ("" if self.check_alive else f" --broker {state.broker_url}"), file=sys.stderr)
            return BROKER_UNREACHABLE_EXIT
        code = publish(run_dir, report, results, batches)
        print(f"run folder: {run_dir}", file=sys.stderr)
        return code


def run_job(state: JobState, params: JobParams, images: list[dict], n_devices: int, watcher: Watcher,
            checkpoint: str | None = None, preprocess_first: bool = True) -> int:
    """Submit the job, say in one line how to follow it from elsewhere, follow it to its report; exit code."""
    manifest = build_manifest(params, checkpoint)
    outage = watcher.outage()
    try:
        n_shards = outage.call(lambda: submit_job(state, params, images, n_devices, manifest, preprocess_first))
        largest = outage.call(lambda: max(len(s) for s in state.all_shards(params.job_id).values()))
    except BrokerUnreachable as exc:
        print(f"error: {exc} while job {params.job_id} was being enqueued: python -m orchestrator resume "
              f"{params.job_id} enqueues what it lacks", file=sys.stderr)
        return BROKER_UNREACHABLE_EXIT
    print(f"job {params.job_id}: {len(images)} images, {n_shards} shards of up to "
          f"{largest} images, batch {params.batch}, "
          f"{n_devices} device(s), backend {params.backend}; follow it with "
          f"`python -m orchestrator status {params.job_id} --broker {state.broker_url}`", file=sys.stderr)
    return watcher.follow(state, params.job_id, params.run_dir)
