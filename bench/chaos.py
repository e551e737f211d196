"""Chaos bench: a real job on the embedded cluster, once undisturbed, then once per fault injected mid-job, then
every fault in one job (each strikes once the job has recovered from the one before); one row per fault.

    .venv/bin/python bench/chaos.py --seed 1                    # everything (about 12 min on 2 cores)
    .venv/bin/python bench/chaos.py --seed 1 --only redis-kill  # one fault (and the undisturbed run)

The set is generated with image files (200 images by default); sim devices answer like a detector, reading
every network input from the tensor store (`load=pixels`), lease TTL 3 s, batch 4, one batch a shard. Where in
the job each fault strikes (after how many shard results, which device) comes from `--seed`: the same seed
strikes at the same places, so the verdicts repeat; the times vary with the machine.

Columns: injected = seconds after submit (shard results written then); completed = the job's report says done
and the command following it exited 0; once = every image of the annotation file counted exactly once; stats =
the 12 COCO stats bit-equal to the undisturbed run's; recovery = seconds from the fault's end to the next
detection (a batch's end) of the device it struck or of the device that took its shard (any device for a fault
that strikes no device); bound = lease TTL + two reaper intervals; manual = steps a person took.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.faults import SilentRelay, redis_pid, signal_process  # noqa: E402
from orchestrator.generated_set import write_set  # noqa: E402
from tasks.settings import ClusterTimings  # noqa: E402
from tasks.shards import read_images  # noqa: E402
from tasks.state import JobState, answers  # noqa: E402
from tasks.store import TensorStore, fingerprint  # noqa: E402
from tasks.streaming import REDUCER_TTL_S  # noqa: E402

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
LEASE_TTL_S = 3.0
TIMINGS = ClusterTimings.with_ttl(LEASE_TTL_S)
BOUND_S = LEASE_TTL_S + 2 * TIMINGS.reap_interval_s
BATCH, STATIC_SIZE = 4, 320
DEVICES = ["cpu:0", "cpu:1"]
REDIS_STOP_S = 30.0
SILENCE_S = 20.0  # past the 15 s socket timeout
DURABLE_LATENCY = "20ms"  # the jobs that measure --durable: Redis' writes, not the devices, set the pace
ENTRY_BYTES = STATIC_SIZE * STATIC_SIZE * 3 + 1024  # about one store entry on disk
FAULTS = ["device-kill", "pool-kill", "follower-kill", "submit-kill", "redis-kill", "redis-stop", "device-stop",
          "silent", "disk-full", "corrupt"]
TITLES = {"device-kill": "kill -9 device worker", "pool-kill": "kill -9 pool", "follower-kill": "kill -9 reducer follower",
          "submit-kill": "kill -9 submit, then resume", "redis-kill": "kill -9 redis-server (restarted on its AOF)",
          "redis-stop": f"SIGSTOP redis-server {REDIS_STOP_S:.0f} s", "device-stop": "SIGSTOP device worker past TTL",
          "silent": f"silent connection {SILENCE_S:.0f} s (relay)", "disk-full": "store disk full",
          "corrupt": "corrupt store entries"}


def processes_on(port: int) -> dict[str, int]:
    """The embedded cluster's processes on this broker port: redis, cpu:N device workers, the pool's parent."""
    found, pool = {}, []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if f"127.0.0.1:{port}/" not in " ".join(argv):
            continue
        if "--device" in argv:
            found[argv[argv.index("--device") + 1]] = int(proc.name)
        elif "--preprocess" in argv:
            pool.append((int(proc.name), ppid))
    pids = {pid for pid, _ in pool}
    for pid, ppid in pool:
        if ppid not in pids:
            found["pool"] = pid  # the parent: its prefork children share its command line
    try:
        found["redis"] = redis_pid(port)
    except LookupError:
        pass
    return found


@dataclass
class Fault:
    """What was done and when (epoch seconds); device/shard: what it struck, if a device."""

    name: str
    t_inject: float = 0.0
    t_over: float = 0.0
    device: str | None = None
    shard: int | None = None
    manual: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Run:
    """One `submit` on the embedded cluster, followed through its broker; faults are injected into it."""

    def __init__(self, folder: Path, dataset: tuple[Path, Path], latency: str, store: Path | None = None,
                 extra: list[str] = ()):
        self.folder = folder
        self.runs = folder / "runs"
        ann, img = dataset
        self.images = read_images(ann)
        self.image_dir = img
        self.store = store or (self.runs / "store")
        folder.mkdir(parents=True, exist_ok=True)
        self.terminal_path = folder / "terminal.log"
        self.args = ["-m", "orchestrator", "submit", "--annotations", str(ann), "--images", str(img),
                     "--backend", f"sim:{latency},load=pixels,answers=detector", "--batch", str(BATCH),
                     "--shard-size", str(BATCH), "--static-size", str(STATIC_SIZE), "--devices", ",".join(DEVICES),
                     "--lease-ttl", str(LEASE_TTL_S), "--run-dir", str(self.runs), "--store", str(self.store), *extra]
        self.proc: subprocess.Popen | None = None
        self.job = ""
        self.state: JobState | None = None
        self.port = 0
        self.t_submit = 0.0
        self.relay: SilentRelay | None = None
        self.relay_worker: subprocess.Popen | None = None
        self.batches: list[dict] = []

    def _spawn(self, args: list[str]) -> subprocess.Popen:
        with open(self.terminal_path, "ab") as out:
            return subprocess.Popen([PYTHON, *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=REPO, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def terminal(self) -> str:
        return self.terminal_path.read_text(errors="replace")

    def start(self) -> "Run":
        self.t_submit = time.time()
        self.proc = self._spawn(self.args)
        line = self._wait(lambda: re.search(r"status (\S+) --broker (redis://\S+)`", self.terminal()), 120,
                          "the job to start")
        self.job = line.group(1)
        self._attach(line.group(2))
        return self

    def _attach(self, url: str) -> None:
        self.state = JobState.open(url, ride_out_s=REDIS_STOP_S + 30)
        self.port = int(re.search(r":(\d+)/", url).group(1))

    def _wait(self, predicate, timeout_s: float, what: str, poll_s: float = 0.05):
        deadline = time.time() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.time() > deadline:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
            time.sleep(poll_s)

    def results(self) -> int:
        return self.state.result_count(self.job)

    def in_flight(self) -> dict[int, str]:
        return self.state.leases.shards_in_flight(self.job)

    def wait_results(self, k: int, timeout_s: float = 300) -> None:
        self._wait(lambda: self.proc.poll() is not None or self.results() >= k, timeout_s, f"{k} shard results")

    def shard_on(self, device: str, timeout_s: float = 120) -> int:
        """Until `device` runs a shard of the job (the shard's number)."""
        def running():
            if self.proc.poll() is not None:
                raise TimeoutError("the job ended first")
            shards = [s for s, d in self.in_flight().items() if d.endswith("/" + device)]
            return shards[0] + 1 if shards else None
        return self._wait(running, timeout_s, f"{device} to run a shard") - 1

    def pids(self) -> dict[str, int]:
        return processes_on(self.port)

    # -- the extra device behind the relay ----------------------------------------------------------------------
    def start_relay_worker(self, device: str = "cpu:2") -> None:
        self.relay = SilentRelay(f"redis://127.0.0.1:{self.port}/0").start()
        with open(self.folder / "relay-worker.log", "ab") as log:
            self.relay_worker = subprocess.Popen(
                [PYTHON, "-m", "workers", "--device", device, "--broker", self.relay.url, "--lease-ttl",
                 str(LEASE_TTL_S)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def retarget_relay(self) -> None:
        if self.relay is not None:
            self.relay.target = ("127.0.0.1", self.port)

    def stop_relay_worker(self) -> None:
        if self.relay_worker is not None and self.relay_worker.poll() is None:
            os.killpg(self.relay_worker.pid, signal.SIGTERM)
            try:
                self.relay_worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.relay_worker.pid, signal.SIGKILL)
                self.relay_worker.wait()
        if self.relay is not None:
            self.relay.close()

    # -- the end ---------------------------------------------------------------------------------------------------
    def finish(self, timeout_s: float = 600) -> dict:
        """The command's exit code and the job's report (None when there is none)."""
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait()
        self.stop_relay_worker()
        folder = self.runs / self.job  # the cluster is gone with the command: what is left is in the run folder
        report = json.loads((folder / "report.json").read_text()) if (folder / "report.json").is_file() else None
        self.batches = json.loads((folder / "batches.json").read_text()) if (folder / "batches.json").is_file() else []
        t_end = time.time()
        return {"code": code, "report": report, "t_end": t_end, "seconds": t_end - self.t_submit,
                "traceback": "Traceback" in self.terminal()}

    def wait_recovered(self, fault: Fault, timeout_s: float = 120) -> None:
        """Until `recovered_at` finds the fault's recovery in the job's batch records (or the job ended)."""
        try:
            self._wait(lambda: self.proc.poll() is not None or recovered_at(self.state.batches(self.job), fault),
                       timeout_s, f"recovery from {fault.name}", poll_s=0.2)
        except TimeoutError as exc:
            fault.notes.append(f"the next fault struck unrecovered: {exc}")


# -- the faults: each waits for its moment, strikes, and returns when the fault is over --------------------------
def strike_device_kill(run: Run, fault: Fault, rng: random.Random) -> None:
    fault.device = rng.choice(DEVICES)
    fault.shard = run.shard_on(fault.device)
    fault.t_inject = time.time()
    signal_process(run.pids()[fault.device], signal.SIGKILL)
    fault.t_over = fault.t_inject
    fault.notes.append(f"{fault.device} on shard {fault.shard}")


def strike_pool_kill(run: Run, fault: Fault, rng: random.Random) -> None:
    fault.t_inject = time.time()
    signal_process(run.pids()["pool"], signal.SIGKILL)
    fault.t_over = fault.t_inject


def strike_follower_kill(run: Run, fault: Fault, rng: random.Random) -> None:
    # the follower is a thread of the pool's main process: it holds the job's reducer lease from the start
    fault.t_inject = time.time()
    signal_process(run.pids()["pool"], signal.SIGKILL)
    fault.t_over = fault.t_inject
    fault.notes.append(f"its reducer lease lapses after {REDUCER_TTL_S:.0f} s")


def strike_submit_kill(run: Run, fault: Fault, rng: random.Random) -> None:
    old = run.port
    fault.t_inject = time.time()
    run.proc.kill()  # its cluster gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and shuts down
    run.proc.wait()
    try:
        run._wait(lambda: not processes_on(old), 60, "the orphaned cluster to stop")
    except TimeoutError as exc:  # name what outlived its cluster, with its log's last line
        left = processes_on(old)
        raise TimeoutError(f"{exc}: still running {', '.join(f'{n} (pid {p})' for n, p in sorted(left.items()))}; "
                           f"{last_log_lines(run, left)}") from None
    fault.manual.append("resume")
    run.proc = run._spawn(["-m", "orchestrator", "resume", run.job, "--run-dir", str(run.runs),
                           "--lease-ttl", str(LEASE_TTL_S)])
    fault.t_over = time.time()
    # the resumed cluster runs a new Redis on the same file, on a new port: its workers name it
    port = run._wait(lambda: next((p for p in _worker_ports(run.proc.pid) if p != old), None), 60,
                     "the resumed cluster")
    run._attach(f"redis://127.0.0.1:{port}/0")
    run.retarget_relay()


def last_log_lines(run: Run, names: dict[str, int]) -> str:
    """The last line of each named process's log in the embedded cluster's folder."""
    lines = []
    files = {"redis": "redis/redis.log", "pool": "logs/preprocess.log"}
    for name in names:
        for log in run.runs.glob(f"**/{files.get(name, 'logs/' + name.replace(':', '') + '.log')}"):
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            lines.append(f"{name}: {tail[0][-200:]}")
    return "; ".join(lines)


def _worker_ports(parent: int) -> list[int]:
    ports = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found = re.search(rb"--broker\0redis://127\.0\.0\.1:(\d+)/", (proc / "cmdline").read_bytes())
                if found:
                    ports.append(int(found.group(1)))
        except (OSError, ValueError, IndexError):
            continue
    return ports


def strike_redis_kill(run: Run, fault: Fault, rng: random.Random) -> None:
    fault.t_inject = time.time()
    signal_process(run.pids()["redis"], signal.SIGKILL)
    url = f"redis://127.0.0.1:{run.port}/0"
    run._wait(lambda: answers(url), 60, "redis-server to be back")  # the embedded cluster starts it again
    fault.t_over = time.time()


def strike_redis_stop(run: Run, fault: Fault, rng: random.Random) -> None:
    pid = run.pids()["redis"]
    fault.t_inject = time.time()
    signal_process(pid, signal.SIGSTOP)
    time.sleep(REDIS_STOP_S)
    signal_process(pid, signal.SIGCONT)
    fault.t_over = time.time()


def strike_device_stop(run: Run, fault: Fault, rng: random.Random) -> None:
    fault.device = rng.choice(DEVICES)
    fault.shard = run.shard_on(fault.device)
    pid = run.pids()[fault.device]
    fault.t_inject = time.time()
    signal_process(pid, signal.SIGSTOP)
    time.sleep(LEASE_TTL_S + 2 * TIMINGS.reap_interval_s)
    signal_process(pid, signal.SIGCONT)
    fault.t_over = time.time()
    fault.notes.append(f"{fault.device} on shard {fault.shard}")


def strike_silent(run: Run, fault: Fault, rng: random.Random) -> None:
    fault.device = "cpu:2"
    fault.shard = run.shard_on(fault.device)
    fault.t_inject = time.time()
    run.relay.go_silent()
    time.sleep(SILENCE_S)
    run.relay.resume()
    fault.t_over = time.time()
    fault.notes.append(f"cpu:2 (behind the relay) on shard {fault.shard}")


def strike_disk_full(run: Run, fault: Fault, rng: random.Random) -> None:
    """The store's tmpfs was sized to fill mid-preprocessing: the fault is the first write that failed."""
    fault.t_inject = run._wait(lambda: _first_step_aside(run), 300, "the store to fill")
    fault.t_over = fault.t_inject


def _first_step_aside(run: Run) -> float | None:
    for log in (run.runs / run.job / "logs").glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if "steps aside" in line:
                return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
    return None


def strike_corrupt(run: Run, fault: Fault, rng: random.Random) -> None:
    """Damage the store entries of the images of up to 4 shards without a result (a flipped byte mid-file)."""
    store = TensorStore(run.store)
    todo = [s for s in run.state.shards_without_result(run.job) if s not in run.in_flight()]
    shards = run.state.all_shards(run.job)
    damaged = 0
    fault.t_inject = time.time()
    for shard in sorted(rng.sample(todo, min(4, len(todo)))):
        for item in shards[shard]:
            path = store.path(fingerprint((run.image_dir / item["file"]).read_bytes(), "static", STATIC_SIZE))
            try:
                with open(path, "r+b") as f:
                    f.seek(path.stat().st_size // 2)
                    byte = f.read(1)
                    f.seek(-1, os.SEEK_CUR)
                    f.write(bytes([byte[0] ^ 0xFF]))
                damaged += 1
            except OSError:
                continue  # not in the store (yet)
    fault.t_over = time.time()
    fault.notes.append(f"{damaged} entries damaged")


STRIKES = {"device-kill": strike_device_kill, "pool-kill": strike_pool_kill, "follower-kill": strike_follower_kill,
           "submit-kill": strike_submit_kill, "redis-kill": strike_redis_kill, "redis-stop": strike_redis_stop,
           "device-stop": strike_device_stop, "silent": strike_silent, "disk-full": strike_disk_full,
           "corrupt": strike_corrupt}
# where in the job (fraction of the shards written) each fault may strike: the follower late, the store early
WINDOWS = {"follower-kill": (0.6, 0.8), "disk-full": (0.0, 0.0), "corrupt": (0.05, 0.2), "pool-kill": (0.05, 0.3)}


def mount_tmpfs(folder: Path, size_bytes: int) -> str | None:
    """A small tmpfs for a full-disk store; the reason when mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                         capture_output=True, text=True)
    return None if out.returncode == 0 else (out.stderr.strip() or f"mount exited {out.returncode}")


def umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


# -- verdicts ---------------------------------------------------------------------------------------------------
def late_write(run: Run, fault: Fault) -> str:
    """What the stopped or silenced worker did with its shard once it ran again."""
    log = (run.folder / "relay-worker.log") if fault.name == "silent" else \
        (run.runs / run.job / "logs" / f"{fault.device.replace(':', '')}.log")
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = re.search(rf"shard {fault.shard} of job {run.job}: \d+ images, (\w+)", text)
    if found:
        return {"stale": "late write refused (fence)", "duplicate": "late write a no-op (already written)",
                "written": "its write came first"}[found.group(1)]
    return "lease lost: nothing written" if "lost the lease" in text or "LeaseLost" in text else "no late write"


def recovered_at(batches: list[dict], fault: Fault) -> float | None:
    """The end of the first batch after the fault was over by the device it struck or the device that took its
    shard (any device for a fault that strikes no device)."""
    devices = None
    if fault.device:
        devices = {fault.device} | ({b["device"] for b in batches if b["shard"] == fault.shard
                                     and b["t_end"] > fault.t_over} if fault.shard is not None else set())
    ends = [b["t_end"] for b in batches if b["t_end"] > fault.t_over and (devices is None or b["device"] in devices)]
    return min(ends) if ends else None


def verdict(run: Run, outcome: dict, reference: list | None, faults: list[Fault]) -> list[dict]:
    report = outcome["report"] or {}
    cov = report.get("coverage") or {}
    completed = outcome["code"] == 0 and report.get("status") == "done"
    once = bool(cov.get("ok")) and cov.get("counted") == cov.get("expected") and not cov.get("duplicated") \
        and not cov.get("missing")
    stats = (report.get("ap") or {}).get("stats")
    equal = reference is None or stats == reference
    rows = []
    for fault in faults:
        t_next = recovered_at(run.batches, fault)
        notes = list(fault.notes)
        if fault.name in ("device-stop", "silent"):
            notes.append(late_write(run, fault))
        if fault.name in ("corrupt", "disk-full"):
            notes.append(f"{(report.get('preprocessing') or {}).get('device_preprocessed', '?')} images preprocessed "
                         "by devices (store misses)")
        if fault.name == "follower-kill" and (report.get("timestamps") or {}).get("done"):
            notes.append(f"report {report['timestamps']['done'] - fault.t_over:.1f} s later")
        if t_next is None and run.batches and fault.t_over >= max(b["t_end"] for b in run.batches):
            notes.append("struck after the job's last detection")
        if outcome["traceback"]:
            notes.append("a traceback on the terminal")
        done_then = len({b["shard"] for b in run.batches if b["t_end"] <= fault.t_inject})
        rows.append({"fault": TITLES[fault.name], "injected": f"{fault.t_inject - run.t_submit:.1f} s "
                                                                f"({done_then} shards done)",
                     "completed": completed, "once": once, "stats": equal,
                     "recovery": None if t_next is None else round(t_next - fault.t_over, 1),
                     "manual": ", ".join(fault.manual) or "none", "notes": "; ".join(notes),
                     "wall": outcome["t_end"] - run.t_submit})
    return rows


def run_job(folder: Path, dataset, latency: str, names: list[str], rng: random.Random, n_shards: int,
            reference: list | None, extra: list[str] = (), store_bytes: int | None = None) -> tuple[list[dict], dict]:
    """One job with `names` struck one after the other, each once the job has recovered from the one before (a fault
    that struck before would be measured through the one after it: a device's kill through a 30 s Redis stop)."""
    store = folder / "store"
    if store_bytes is not None:
        refused = mount_tmpfs(store, store_bytes)
        if refused:
            return [{"fault": TITLES["disk-full"], "skipped": f"a full disk needs a small tmpfs: {refused}"}], {}
    run = Run(folder, dataset, latency, store, list(extra))
    try:
        run.start()
        if "silent" in names:
            run.start_relay_worker()
        faults = []
        for name in names:
            low, high = WINDOWS.get(name, (0.1, 0.5))
            k = max(run.results(), int(n_shards * rng.uniform(low, high)))
            run.wait_results(k)
            fault = Fault(name)
            try:
                STRIKES[name](run, fault, rng)
            except TimeoutError as exc:
                fault.notes.append(f"did not strike: {exc}")
                fault.t_inject = fault.t_over = fault.t_over or time.time()
            faults.append(fault)
            if name != names[-1]:
                run.wait_recovered(fault)  # the next fault strikes a job that has recovered from this one
        outcome = run.finish()
        return verdict(run, outcome, reference, faults), outcome
    finally:
        if run.proc is not None and run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
        run.stop_relay_worker()
        if store_bytes is not None:
            umount(store)


def table(rows: list[dict]) -> str:
    head = ["fault", "injected at", "completed", "images once", "12 stats equal", "recovery s", f"<= {BOUND_S:g} s",
            "manual steps", "notes"]
    yes = lambda v: "yes" if v else "NO"  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['fault']} | not run: {r['skipped']} |" + " |" * (len(head) - 2))
            continue
        rec = "-" if r["recovery"] is None else f"{r['recovery']:.1f}"
        within = "-" if r["recovery"] is None else yes(r["recovery"] <= BOUND_S)
        lines.append(f"| {r['fault']} | {r['injected']} | {yes(r['completed'])} | {yes(r['once'])} | "
                     f"{yes(r['stats'])} | {rec} | {within} | {r['manual']} | {r['notes']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python bench/chaos.py --seed 1")
    p.add_argument("--seed", type=int, default=1, help="where the faults strike (default 1)")
    p.add_argument("--images", type=int, default=200, help="images in the generated set (default 200)")
    p.add_argument("--latency", default="500ms", help="sim latency of a batch in the one-fault jobs (default 500ms)")
    p.add_argument("--combined-images", type=int, default=0,
                   help="images of the job that takes every fault (default 6 x --images: it outlasts them)")
    p.add_argument("--combined-latency", default="1000ms",
                   help="sim latency in the job that takes every fault (default 1000ms)")
    p.add_argument("--only", choices=FAULTS, action="append", help="run only these faults (repeatable)")
    p.add_argument("--no-combined", action="store_true", help="skip the job that takes every fault")
    p.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = p.parse_args(argv)
    if args.images < 8 * BATCH:
        print(f"error: at least {8 * BATCH} images (--images)", file=sys.stderr)
        return 2
    if shutil.which("redis-server") is None:
        print("error: redis-server not found on PATH (apt-get install redis-server)", file=sys.stderr)
        return 2
    names = args.only or FAULTS
    root = Path(tempfile.mkdtemp(prefix="chaos-"))
    dataset = write_set(root / "set", args.images, seed=args.seed, images=True)
    n_shards = -(-args.images // BATCH)
    entries_bytes = args.images * ENTRY_BYTES
    print(f"chaos bench, seed {args.seed}: {args.images} images, {n_shards} shards of {BATCH}, "
          f"sim {args.latency}, devices {', '.join(DEVICES)}, lease TTL {LEASE_TTL_S:g} s, "
          f"reaper every {TIMINGS.reap_interval_s:g} s; folders in {root}", file=sys.stderr)
    try:
        _, base = run_job(root / "undisturbed", dataset, args.latency, [], random.Random(args.seed), n_shards,
                                  None)
        reference = base["report"]["ap"]["stats"]
        costs = {}
        for name, extra in (("everysec", []), ("durable", ["--durable"])):  # Redis writes dominate at 20 ms
            _, costs[name] = run_job(root / f"fast-{name}", dataset, DURABLE_LATENCY, [], random.Random(args.seed),
                                     n_shards, reference, extra)
        rows = []
        for i, name in enumerate(names):
            rng = random.Random(f"{args.seed}:{name}")
            latency = "2000ms" if name == "silent" else args.latency  # the job outlasts 20 s of silence
            store_bytes = int(entries_bytes * rng.uniform(0.2, 0.5)) if name == "disk-full" else None
            print(f"  {TITLES[name]} ...", file=sys.stderr)
            got, _ = run_job(root / name, dataset, latency, [name], rng, n_shards, reference, store_bytes=store_bytes)
            rows += got
        if not args.no_combined:
            rng = random.Random(f"{args.seed}:combined")
            order = [n for n in FAULTS if n in names and n != "disk-full"]
            rng.shuffle(order)
            order = (["disk-full"] if "disk-full" in names else []) + order
            # its own, larger set: with batches short enough that a recovery is not hidden behind one, the job
            # outlasts every fault and the waits for their recoveries; its reference is an undisturbed run of it
            images = args.combined_images or 6 * args.images
            big = write_set(root / "set-combined", images, seed=args.seed, images=True)
            _, big_base = run_job(root / "combined-undisturbed", big, DURABLE_LATENCY, [], random.Random(args.seed),
                                  -(-images // BATCH), None)
            print(f"  every fault in one job ({images} images, sim {args.combined_latency}): {', '.join(order)} ...",
                  file=sys.stderr)
            got, _ = run_job(root / "combined", big, args.combined_latency, order, rng, -(-images // BATCH),
                             big_base["report"]["ap"]["stats"],
                             store_bytes=int(images * ENTRY_BYTES * 0.3) if "disk-full" in order else None)
            rows += [{**r, "fault": f"all in one job: {r['fault']}"} for r in got]
        print(table(rows))
        print(f"\nundisturbed, sim {args.latency}: {base['seconds']:.1f} s submit to report")
        for name, outcome in costs.items():
            same = (outcome["report"] or {}).get("ap", {}).get("stats") == reference
            fsync = "always (--durable)" if name == "durable" else "everysec"
            print(f"undisturbed, sim {DURABLE_LATENCY}, appendfsync {fsync}: {outcome['seconds']:.1f} s submit to "
                  f"report, exit {outcome['code']}, "
                  f"{'the same 12 stats' if same else 'OTHER STATS'}")
        return 0
    finally:
        if args.keep:
            print(f"run folders: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
