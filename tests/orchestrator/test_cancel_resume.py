"""cancel and resume on a running cluster: nothing runs after cancel; a resumed job reports what an uninterrupted
one does."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from real_processes import run_cli, wait_for
from orchestrator.control import active_tasks
from tasks.state import JobState

pytestmark = pytest.mark.slow
N_IMAGES = 40
UNREADABLE = {1006, 1051}  # their boxes count as missed: AP below 1, so equal AP means equal work


def write_set(folder: Path):
    (folder / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(N_IMAGES):
        image_id = 1000 + 3 * i
        path = folder / "images" / f"{image_id}.jpg"
        if image_id in UNREADABLE:
            path.write_bytes(b"not a jpeg")
        else:
            cv2.imwrite(str(path), np.full((48, 64, 3), 3 * i, dtype=np.uint8))
        images.append({"id": image_id, "file_name": path.name, "width": 64, "height": 48})
        anns.append({"id": i + 1, "image_id": image_id, "category_id": 18, "bbox": [4, 4, 20 + i % 30, 20],
                     "area": 400.0, "iscrowd": 0})
    ann = folder / "annotations.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 18, "name": "dog"}]}))
    return ann, folder / "images"


def job_args(url, ann, img, runs, latency):
    return ["submit", "--broker", url, "--annotations", str(ann), "--images", str(img), "--backend", f"sim:{latency}",
            "--batch", "2", "--shard-size", "2", "--static-size", "320", "--run-dir", str(runs)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("cancel_set"))


@pytest.fixture(scope="module")
def uninterrupted(shared_cluster, data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("uninterrupted")
    out = run_cli(*job_args(shared_cluster["url"], *data, runs, "20ms"), timeout_s=240)
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = runs.glob("*/report.json")
    report = json.loads(path.read_text())
    assert 0.5 < report["ap"]["stats"]["AP"] < 1.0 and len(report["coverage"]["unreadable"]) == 2
    return report


def start_job(processes, url, data, runs, state):
    """A submit process on the shared cluster, slow enough to interrupt; returns (process, job id)."""
    known = set(state.job_ids())
    proc = processes.spawn("submit", ["-m", "orchestrator", *job_args(url, *data, runs, "300ms")], url)
    job = wait_for(lambda: set(state.job_ids()) - known, 60, what="the job").pop()
    wait_for(lambda: state.result_count(job) >= 2, 60, what="two shard results")
    return proc, job


def same_numbers(report, reference):
    assert report["status"] == "done" and report["errors"] == []
    assert report["ap"]["stats"] == reference["ap"]["stats"]
    assert report["coverage"]["counted"] == reference["coverage"]["counted"] == N_IMAGES
    assert report["coverage"]["unreadable"] == reference["coverage"]["unreadable"]


def test_killed_orchestrator_with_lost_queue_resumes_to_the_same_report(shared_cluster, data, uninterrupted,
                                                                        processes, tmp_path):
    url = shared_cluster["url"]
    state = JobState.open(url)
    proc, job = start_job(processes, url, data, tmp_path / "runs", state)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # the crash also lost what was queued (e.g. killed while enqueueing); the reapers of the device workers find
    # lost shards by themselves (tests/workers/test_lost_work.py), resume enqueues whatever they have not yet
    lost = [k for q in ("infer", "preprocess") for k in state.r.keys(state.keys.queue(q) + "*")
            if state.r.type(k) == "list"]
    state.r.delete(*lost)
    time.sleep(1.0)  # the shards that were running finish
    assert state.status(job) == "running" and state.shards_without_result(job)
    without_result = set(state.shards_without_result(job))
    t_resume = time.time()
    out = run_cli("resume", job, "--broker", url, "--run-dir", str(tmp_path / "runs"), "--timeout", "120")
    assert out.returncode == 0, out.stderr[-2000:]
    plan = re.search(r"(\d+)/(\d+) shards have a result; re-enqueued (\d+)(?: \([^)]*\))?"
                     r"(?:; (\d+) still queued)?(?:; (\d+) running now)?", out.stderr)
    assert plan, out.stderr
    done, n_shards, enqueued, queued, running = (int(g or 0) for g in plan.groups())
    assert done + enqueued + queued + running == n_shards == 20 and done < n_shards, out.stderr  # each shard once
    report = json.loads((tmp_path / "runs" / job / "report.json").read_text())
    same_numbers(report, uninterrupted)
    # only the shards without a result ran again
    rerun = {b["shard"] for b in state.batches(job) if b["t_start"] >= t_resume}
    assert rerun and rerun <= without_result
    assert state.summary(job)["resumes"] == 1
    again = run_cli("resume", job, "--broker", url, "--run-dir", str(tmp_path / "again"))
    assert again.returncode == 0 and "nothing to resume" in again.stderr
    same_numbers(json.loads((tmp_path / "again" / job / "report.json").read_text()), uninterrupted)


def test_resume_writes_the_run_folder_where_the_job_was_submitted(shared_cluster, data, uninterrupted, processes,
                                                                  tmp_path):
    url = shared_cluster["url"]
    state = JobState.open(url)
    elsewhere = tmp_path / "elsewhere"
    proc, job = start_job(processes, url, data, elsewhere, state)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert state.params(job).run_dir == str(elsewhere / job)
    cwd = tmp_path / "cwd"  # where a resume without --run-dir used to write: ./runs
    cwd.mkdir()
    out = run_cli("resume", job, "--broker", url, "--timeout", "120", cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"run folder: {elsewhere / job}" in out.stderr
    same_numbers(json.loads((elsewhere / job / "report.json").read_text()), uninterrupted)
    assert list(cwd.iterdir()) == []


def test_cancel_leaves_nothing_running_and_resume_no_wait_completes_the_job(shared_cluster, data, uninterrupted,
                                                                     processes, tmp_path):
    url = shared_cluster["url"]
    state = JobState.open(url)
    proc, job = start_job(processes, url, data, tmp_path / "runs", state)
    out = run_cli("cancel", job, "--broker", url, "--timeout", "30")
    assert out.returncode == 0, out.stderr
    assert "no task of it is running" in out.stdout and "revoked" in out.stderr
    assert proc.wait(30) == 1 and "cancelled" in processes.log(proc)
    assert state.status(job) == "cancelled" and state.leases.shards_in_flight(job) == {}
    assert state.queued(["infer", "preprocess", "reduce"], job) == []
    batches, results = len(state.batches(job)), state.result_count(job)
    time.sleep(1.5)  # five batch times of the sim device: nothing of the job may run meanwhile
    assert (len(state.batches(job)), state.result_count(job)) == (batches, results)
    assert results < state.summary(job)["n_shards"]
    assert active_tasks(state, job) == []
    twice = run_cli("cancel", job, "--broker", url)
    assert twice.returncode == 0 and "already cancelled" in twice.stderr

    # --no-wait: resume re-enqueues the shards without a result and returns; the workers finish the job alone
    without_result = state.shards_without_result(job)
    out = run_cli("resume", job, "--broker", url, "--no-wait")
    status_at_return, results_at_return = state.status(job), state.result_count(job)
    assert out.returncode == 0, out.stderr[-2000:]
    plan = re.search(rf"job {job} \(was cancelled\): \d+/20 shards have a result; re-enqueued (\d+) \(([\d, ]+)\)$",
                     out.stderr.strip())
    assert plan, out.stderr
    assert int(plan.group(1)) == 20 - results == len(without_result)
    assert sorted(int(s) for s in plan.group(2).split(", ")) == sorted(without_result)
    assert status_at_return == "running" and results_at_return < 20  # it did not wait for the job
    assert out.stdout == "" and "run folder" not in out.stderr and not (tmp_path / "runs" / job).exists()
    wait_for(lambda: state.status(job) == "done", 120, what="the resumed job to end on the workers alone")
    follow = run_cli("resume", job, "--broker", url, "--run-dir", str(tmp_path / "runs"), "--timeout", "120")
    assert follow.returncode == 0 and "nothing to resume" in follow.stderr, follow.stderr[-2000:]
    report = json.loads((tmp_path / "runs" / job / "report.json").read_text())
    same_numbers(report, uninterrupted)
    assert state.summary(job)["shards_done"] == state.summary(job)["n_shards"]
    done = run_cli("cancel", job, "--broker", url)
    assert done.returncode == 0 and "nothing to cancel" in done.stdout


def cluster_processes(url: str) -> list[int]:
    """Pids of processes started with this broker URL on their command line (the embedded cluster's)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and url.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "crash"])
def test_interrupted_embedded_submit_resumes_from_its_run_folder(sig, data, uninterrupted, processes, tmp_path):
    runs = tmp_path / "runs"
    args = job_args("unused", *data, runs, "150ms")
    args = args[:1] + args[3:] + ["--devices", "cpu:0"]  # no --broker: the embedded cluster
    proc = processes.spawn("submit", ["-m", "orchestrator", *args], "redis://127.0.0.1:1/0")
    follow = wait_for(lambda: re.search(r"status (\S+) --broker (redis://\S+)`", processes.log(proc)), 120,
                      what="the embedded job to start")
    job, url = follow.group(1), follow.group(2)
    state = JobState.open(url)
    wait_for(lambda: state.result_count(job) >= 2, 60, what="two shard results")
    assert proc.poll() is None, "the job ended before it could be interrupted"
    os.kill(proc.pid, sig)
    if sig == signal.SIGINT:  # Ctrl-C: submit stops everything it started
        assert proc.wait(60) == 130 and "interrupted" in processes.log(proc)
    else:  # killed: its Redis and workers follow it (the kernel signals them), none is left behind
        proc.wait(10)
    wait_for(lambda: not cluster_processes(url), 60, what="the embedded cluster's processes to exit")
    assert (runs / job / "redis").is_dir() and not (runs / job / "report.json").exists()
    out = run_cli("resume", job, "--run-dir", str(runs), "--timeout", "120", timeout_s=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "restarting the embedded cluster" in out.stderr
    report = json.loads((runs / job / "report.json").read_text())
    same_numbers(report, uninterrupted)
    assert report["resumes"] == 1
