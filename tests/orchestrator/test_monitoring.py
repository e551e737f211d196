"""Monitoring tells the truth mid-job: Flower (its API and its Workers page in a real browser) shows every busy device
worker online with its shard as the active task and the shard's progress growing; `status JOB` prints that progress;
the report links to the dashboard that watched the job.

One cluster for the module (a preprocessing pool, sim devices cpu:0 and cpu:1, the `dashboard` command with a
login); each test runs its own job of two 24-image shards in batches of 8 at 6 s a batch, so each device runs one
shard for 18 s. Flower calls a worker offline 4 s after the last event it sent (a heartbeat, or any task event such
as a batch's progress): 6 s between batches leaves a worker that sends no heartbeat while it runs a task (Celery's
solo pool) offline for 2 s of every batch.
"""
from __future__ import annotations

import ast
import json
import re
import time
from functools import partial

import pytest

from browser import artifacts_dir, render
from orchestrator.cluster import free_port
from orchestrator.generated_set import write_set
from real_processes import Processes, fresh_db_url, run_cli, wait_for
from tasks.state import JobState
from test_dashboard import LOGIN, get

pytestmark = pytest.mark.slow

DEVICES = ("cpu:0", "cpu:1")
BATCH_S = 6.0
BACKEND = f"sim:{BATCH_S:g}s,load=none"  # seconds per batch, whatever its size; no image read
SHARD_IMAGES, BATCH = 24, 8
HEARTBEAT_EXPIRY_S = 4.0  # Flower: offline 2 x the 2 s heartbeat interval after the last event of a worker


@pytest.fixture(scope="module")
def monitored(redis_server, tmp_path_factory):
    """The cluster and its dashboard: {"url", "base" (Flower's URL), "procs", "data" (annotation, images), "runs"}."""
    folder = tmp_path_factory.mktemp("monitored")
    url = fresh_db_url(redis_server)
    procs = Processes(folder)
    base = f"http://127.0.0.1:{free_port()}"
    try:
        workers = [procs.preprocess_pool(url)] + [procs.device_worker(url, d, "--backend", BACKEND) for d in DEVICES]
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FLOWER_BASIC_AUTH", LOGIN)
            procs.spawn("dashboard", ["-m", "orchestrator", "dashboard", "--broker", url, "--address", "127.0.0.1",
                                      "--port", base.rsplit(":", 1)[1]], url)
        for worker in workers:
            procs.wait_ready(worker)
        def every_device_online():
            alive = get(base + "/api/workers?status=1")[1] or {}
            return all(any(n.startswith(f"{d}-") and up for n, up in alive.items()) for d in DEVICES)
        wait_for(every_device_online, 60, 0.5, what="Flower to see every device worker online")
        data = write_set(folder / "set", SHARD_IMAGES * len(DEVICES), images=True)
        yield {"url": url, "base": base, "procs": procs, "data": data, "runs": folder / "runs"}
    finally:
        procs.stop()


def start_job(monitored, name: str) -> tuple:
    """A job of one 24-image shard per device, submitted in the background: (submit process, job id)."""
    ann, img = monitored["data"]
    proc = monitored["procs"].spawn(name, [
        "-m", "orchestrator", "submit", "--broker", monitored["url"], "--annotations", str(ann), "--images", str(img),
        "--backend", BACKEND, "--batch", str(BATCH), "--shard-size", str(SHARD_IMAGES), "--static-size", "320",
        "--run-dir", str(monitored["runs"])], monitored["url"])

    def job_id():
        assert proc.poll() is None, Processes.log(proc)[-2000:]
        m = re.search(r"^job (\S+): ", Processes.log(proc), re.MULTILINE)
        return m and m.group(1)
    return proc, wait_for(job_id, 60, what="submit to name its job")


def shards_running(state: JobState, job: str) -> list[dict]:
    """Until every device runs a shard of the job (lease records: shard, device, task id, since), by device."""
    def both():
        shards = state.leases.in_flight(job)
        return sorted(shards, key=lambda s: s["device"]) if len(shards) == len(DEVICES) else None
    return wait_for(both, 60, 0.2, what="every device to run a shard of the job")


def flower_worker(workers, device: str) -> str:
    (name,) = [n for n in workers if n.startswith(f"{device}-")]
    return name


def task_progress(base: str, task_id: str) -> dict | None:
    """Flower's view of the task (/api/task/info): its PROGRESS fields, None until the first batch."""
    status, info = get(f"{base}/api/task/info/{task_id}")
    if status != 200 or info.get("state") != "PROGRESS":
        return None
    return ast.literal_eval(info["result"])  # the task-progress event's text, a dict's repr


def active_tasks(base: str, worker: str) -> list[dict] | None:
    """The tasks `worker` runs now, as it answers Flower's inspect (a broadcast that its consumer loop answers within
    Flower's 1 s); None without an answer."""
    status, workers = get(f"{base}/api/workers?refresh=1&workername={worker}")
    return (workers or {}).get(worker, {}).get("active") if status == 200 else None


def finish(proc) -> None:
    assert proc.wait(120) == 0, Processes.log(proc)[-3000:]


def test_flower_api_shows_busy_devices_online_running_their_shard_with_growing_progress(monitored):
    base, state = monitored["base"], JobState.open(monitored["url"])
    proc, job = start_job(monitored, "submit-api")
    shards = shards_running(state, job)
    deadline = max(float(s["since"]) for s in shards) + 2.5 * BATCH_S  # the third and last batch ends at 3 x
    seen: dict[str, list[int]] = {s["task"]: [] for s in shards}  # each task's images done, as Flower showed them

    def online_until(batches: int) -> None:
        """Every 0.25 s until each shard showed `batches` batches done: every worker online."""
        while not all(len(done) >= batches for done in seen.values()):
            assert time.time() < deadline, f"the shards did not show {batches} batches done in time: {seen}"
            status, alive = get(base + "/api/workers?status=1")
            assert status == 200 and all(flower_worker(alive, d) for d in DEVICES)
            assert all(alive.values()), alive
            for task, done in seen.items():
                progress = task_progress(base, task)
                if progress and progress["done"] not in done:
                    done.append(progress["done"])
            time.sleep(0.25)

    online_until(1)
    _, names = get(base + "/api/workers?status=1")
    for shard in shards:
        worker = flower_worker(names, shard["device"].split("/")[1])
        # the one task the worker runs: this shard's
        (active,) = wait_for(partial(active_tasks, base, worker), 5, 0.2,
                             what=f"{worker} to answer Flower's inspect while it runs a shard")
        assert active["id"] == shard["task"] and active["name"] == "evaluator.infer"
        kwargs = ast.literal_eval(active["kwargs"])  # Celery's inspect gives their repr
        assert kwargs["job_id"] == job and kwargs["shard"] == shard["shard"]
        _, tasks = get(f"{base}/api/tasks?workername={worker}&state=PROGRESS")
        assert list(tasks) == [shard["task"]] and tasks[shard["task"]]["worker"] == worker
    online_until(2)
    assert all(done == [BATCH, 2 * BATCH] for done in seen.values()), seen  # it grows, batch by batch
    for shard in shards:
        progress = task_progress(base, shard["task"])
        assert progress["images"] == SHARD_IMAGES and progress["batch"] == BATCH
        assert f"{progress['host']}/{progress['device']}" == shard["device"]
        assert 0.5 * BATCH / BATCH_S < progress["images_per_s"] <= BATCH / BATCH_S
    assert {s["task"] for s in state.leases.in_flight(job)} == {s["task"] for s in shards}  # still running

    finish(proc)
    report = json.loads((monitored["runs"] / job / "report.json").read_text())
    board = report["dashboard"]
    assert board["url"] == base + "/" and board["tasks"] == base + "/tasks" and board["search"] == job
    markdown = (monitored["runs"] / job / "report.md").read_text()
    assert f"- dashboard: [{board['tasks']}]({board['tasks']}), search `{job}`" in markdown
    status, found = get(board["api"])  # the link finds exactly the job's tasks
    assert status == 200 and all(job in t["kwargs"] for t in found.values())
    assert sorted(t["name"] for t in found.values()) == ["evaluator.infer"] * 2 + ["evaluator.preprocess"] * 2 + [
        "evaluator.reduce"]


def test_the_workers_page_in_a_browser_lists_every_busy_device_online(monitored):
    base, state = monitored["base"], JobState.open(monitored["url"])
    proc, job = start_job(monitored, "submit-browser")
    shards = shards_running(state, job)
    time.sleep(max(0.0, max(float(s["since"]) for s in shards) + HEARTBEAT_EXPIRY_S + 0.5 - time.time()))
    shot = artifacts_dir() / "flower-workers-mid-job.png"
    text = render(base.replace("http://", f"http://{LOGIN}@") + "/workers", shot)
    assert {s["task"] for s in state.leases.in_flight(job)} == {s["task"] for s in shards}, "the job ended first"
    rows = [line for line in text.splitlines() if re.match(r"cpu:[01]-\d+@", line)]
    for device in DEVICES:
        (row,) = [r for r in rows if r.startswith(f"{device}-")]
        assert re.match(rf"{device}-\d+@\S+ \| Online \| 1 \|", row), (row, shot)  # online, one active task
    assert "Offline" not in text, shot
    finish(proc)


def test_status_prints_each_running_shards_progress(monitored):
    state = JobState.open(monitored["url"])
    proc, job = start_job(monitored, "submit-status")
    shards = shards_running(state, job)
    line = re.compile(r"^  shard (\d+) on (\S+): (\d+)/(\d+) images, ([\d.]+) images/s$", re.MULTILINE)

    def progress_lines(done: int):
        """status's line for each shard, once both have done `done` images."""
        out = run_cli("status", job, "--broker", monitored["url"])
        assert out.returncode == 0, out.stderr
        found = {int(m[1]): m for m in line.finditer(out.stdout)}
        return found if len(found) == len(DEVICES) and all(int(m[3]) >= done for m in found.values()) else None
    first = wait_for(lambda: progress_lines(BATCH), 3 * BATCH_S, 0.5, what="status to print both shards' progress")
    second = wait_for(lambda: progress_lines(2 * BATCH), 3 * BATCH_S, 0.5, what="status to print more progress")
    for shard in shards:
        a, b = first[shard["shard"]], second[shard["shard"]]
        assert a[2] == b[2] == shard["device"] and a[4] == b[4] == str(SHARD_IMAGES)
        assert (int(a[3]), int(b[3])) == (BATCH, 2 * BATCH), (a[0], b[0])
        assert 0.5 * BATCH / BATCH_S < float(b[5]) <= BATCH / BATCH_S, b[0]
    finish(proc)
    out = run_cli("status", job, "--broker", monitored["url"])
    assert "running shards: none" in out.stdout, out.stdout
