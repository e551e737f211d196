"""Faults a job rides out with no one at the keyboard: its Redis killed and restarted, a broker away for 10 s,
a full store disk, a worker's connection gone silent. Each job completes with exit 0, every image once, the 12 stats of an undisturbed run, and
no traceback on the terminal."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.faults import SilentRelay, redis_pid
from real_processes import wait_for
from evaluation.coco_eval import DEFAULT_EVALUATOR, evaluate
from orchestrator.cluster import RedisServer
from orchestrator.generated_set import write_set
from tasks.lease import DeviceLease
from tasks.params import JobParams
from tasks.settings import SOCKET_TIMEOUT_S
from tasks.shards import read_images
from tasks.state import JobState
from workers.backends import create_backend
from workers.inference import ShardRunner, run_shard

pytestmark = pytest.mark.slow
N_IMAGES = 96
STATIC_SIZE = 320


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("faults_set"), N_IMAGES, seed=21, images=True)


@pytest.fixture(scope="module")
def reference_stats(dataset, redis_server):
    """The 12 stats of the set's detector-like answers, made in this process through the worker's own path."""
    ann, img = dataset
    state = JobState.open(f"redis://127.0.0.1:{redis_server.port}/0")
    lease = DeviceLease(state.r, "cpu:0", 30.0, host="reference")
    lease.try_acquire()
    backend = "sim:0ms,load=none,answers=detector"
    params = JobParams(job_id="reference", annotation=str(ann), image_dir=str(img), backend=backend, batch=4,
                       size_mode="static", static_size=STATIC_SIZE)
    items = read_images(ann)
    state.create(params, [items])
    payload = run_shard(ShardRunner(state, lease), create_backend(backend, device="cpu:0"), params, 0, items)
    lease.release()
    state.delete_job("reference")
    return evaluate(str(ann), payload["results"], DEFAULT_EVALUATOR)["stats"]


def submit_args(dataset, runs: Path, latency: str, *extra: str) -> list[str]:
    ann, img = dataset
    return ["-m", "orchestrator", "submit", "--annotations", str(ann), "--images", str(img),
            "--backend", f"sim:{latency},answers=detector", "--batch", "4", "--static-size", str(STATIC_SIZE),
            "--lease-ttl", "3", "--run-dir", str(runs), *extra]


def followed(processes, proc) -> tuple[str, JobState]:
    """The job id and the state of the broker a submit prints in its `follow it with` line."""
    line = wait_for(lambda: re.search(r"status (\S+) --broker (redis://\S+)`", processes.log(proc)), 120,
                    what="the job to start")
    return line.group(1), JobState.open(line.group(2))


def finished(processes, proc, runs: Path, job: str, reference_stats: dict, timeout_s: float = 240) -> dict:
    """submit's exit 0 and its report: every image once, the undisturbed stats, no traceback."""
    assert proc.wait(timeout_s) == 0, processes.log(proc)[-3000:]
    terminal = processes.log(proc)
    assert "Traceback" not in terminal, terminal[-3000:]
    report = json.loads((runs / job / "report.json").read_text())
    cov = report["coverage"]
    assert report["status"] == "done" and cov["ok"] and cov["counted"] == cov["expected"] == N_IMAGES
    assert cov["duplicated"] == [] and cov["missing"] == []
    assert report["ap"]["stats"] == reference_stats
    return report


def test_the_embedded_redis_killed_mid_job_is_restarted_on_its_file_and_the_job_completes(
        dataset, reference_stats, processes, tmp_path):
    runs = tmp_path / "runs"
    proc = processes.spawn("submit", submit_args(dataset, runs, "300ms,load=none", "--devices", "cpu:0,cpu:1"),
                           "redis://127.0.0.1:1/0")
    job, state = followed(processes, proc)
    wait_for(lambda: state.result_count(job) >= 3, 120, what="three shard results")
    port = state.r.connection_pool.connection_kwargs["port"]
    os.kill(redis_pid(port), signal.SIGKILL)
    finished(processes, proc, runs, job, reference_stats)
    terminal = processes.log(proc)
    assert "redis-server exited (code -9); started again on its append-only file" in terminal
    assert "broker unreachable" in terminal and "broker back after" in terminal


def test_submit_rides_out_a_10_s_broker_outage_in_one_line_and_no_traceback(
        dataset, reference_stats, processes, tmp_path):
    redis = RedisServer(tmp_path / "redis", extra_args=["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    try:
        url = redis.url
        workers = [processes.preprocess_pool(url)] + [processes.device_worker(url, d) for d in ("cpu:0", "cpu:1")]
        for w in workers:
            processes.wait_ready(w)
        runs = tmp_path / "runs"
        proc = processes.spawn("submit", submit_args(dataset, runs, "250ms,load=none", "--broker", url), url)
        job, state = followed(processes, proc)
        wait_for(lambda: state.result_count(job) >= 3, 120, what="three shard results")
        redis.proc.kill()
        redis.proc.wait()
        t_down = time.time()
        time.sleep(10.0)
        redis.start()  # the same port, the same append-only file
        finished(processes, proc, runs, job, reference_stats)
        terminal = processes.log(proc)
        outage_lines = [line for line in terminal.splitlines() if "broker unreachable" in line]
        assert len(outage_lines) == 1 and "retrying for up to 600 s (--broker-timeout)" in outage_lines[0]
        back = re.search(r"broker back after (\d+) s", terminal)
        assert back and 9 <= int(back.group(1)) <= 10 + 5, terminal[-2000:]
        for w in workers:  # every worker rode it out in its own log, and is still running
            assert w.poll() is None and "broker back after" in processes.log(w)
        assert time.time() - t_down < 240
    finally:
        redis.stop()


def mount_tmpfs(folder: Path, size: str) -> None:
    folder.mkdir(parents=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one was refused here: {out.stderr.strip()}")


def test_a_full_store_disk_steps_aside_and_the_job_completes(dataset, reference_stats, processes, tmp_path):
    store = tmp_path / "store"
    mount_tmpfs(store, "2m")  # room for a few entries of this set, not all of them
    try:
        runs = tmp_path / "runs"
        proc = processes.spawn("submit", submit_args(dataset, runs, "20ms,load=pixels", "--devices", "cpu:0",
                                                     "--store", str(store)), "redis://127.0.0.1:1/0")
        job, _ = followed(processes, proc)
        report = finished(processes, proc, runs, job, reference_stats)
        logs = [line for p in (runs / job / "logs").glob("*.log") for line in p.read_text(errors="replace").splitlines()]
        warnings = [line for line in logs if "steps aside" in line]
        assert warnings and all("No space left on device" in line for line in warnings)
        # one warning per process that writes the store: the pool's one child (2 cores, 1 device) and the worker
        assert len(warnings) <= 2, warnings
        assert report["preprocessing"]["device_preprocessed"] > 0  # the device made what the store could not keep
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)


SILENCE_S = SOCKET_TIMEOUT_S + 5  # past the socket timeout: the worker's stuck commands give up and reconnect


def test_a_connection_gone_silent_past_its_socket_timeout_recovers(
        dataset, reference_stats, processes, redis_url, tmp_path):
    relay = SilentRelay(redis_url).start()
    try:
        silent = processes.device_worker(relay.url, "cpu:0")  # every connection of this worker goes through it
        workers = [silent, processes.preprocess_pool(redis_url), processes.device_worker(redis_url, "cpu:1")]
        for w in workers:
            processes.wait_ready(w)
        runs = tmp_path / "runs"
        proc = processes.spawn("submit", submit_args(dataset, runs, "2000ms,load=none", "--broker", redis_url),
                               redis_url)
        job, state = followed(processes, proc)
        wait_for(lambda: any(d.endswith("/cpu:0") for d in state.leases.shards_in_flight(job).values()), 120,
                 what="cpu:0 to run a shard")
        (stuck,) = [s for s, d in state.leases.shards_in_flight(job).items() if d.endswith("/cpu:0")]
        relay.go_silent()
        time.sleep(SILENCE_S)
        relay.resume()
        t_back = time.time()
        finished(processes, proc, runs, job, reference_stats)
        batches = state.batches(job)
        assert any(b["shard"] == stuck and b["device"] == "cpu:1" for b in batches)  # its shard was given back
        assert any(b["device"] == "cpu:0" and b["t_start"] > t_back for b in batches), \
            processes.log(silent)[-3000:]  # ... and the worker took shards again once its link was back
        assert silent.poll() is None
    finally:
        processes.stop()  # before the relay closes: a worker that lost its broker would wait for it
        relay.close()
