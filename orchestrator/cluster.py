"""The embedded local cluster: a private redis-server, the preprocessing pool, one worker per device."""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from commandline import USAGE_EXIT
from tasks.state import answers


try:  # Linux: ask the kernel to signal a child when its parent dies
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
except OSError:
    _LIBC = None
PR_SET_PDEATHSIG = 1


def die_with(parent_pid: int):
    """A Popen preexec_fn: the child gets SIGTERM when `parent_pid` dies, even by SIGKILL, so a crashed
    submit leaves no orphan Redis or worker behind (and `resume` never finds its folder in use)."""
    def arm() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent_pid:  # the parent died before the request was made
                os.kill(os.getpid(), signal.SIGTERM)
    return arm


DEATHS_PER_MINUTE = 3  # a device whose worker dies this often is dropped from the job


def say(line: str) -> None:
    print(line, file=sys.stderr)


class ClusterError(RuntimeError):
    """A process of the local cluster failed to start or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _signal_group(proc: subprocess.Popen, sig: int, even_if_exited: bool = False) -> None:
    """Signal a worker and its pool children (each worker leads its own process group)."""
    if even_if_exited or proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


class RedisServer:
    """redis-server on a free loopback port, its data and log in `folder`; stopped by `stop()`."""

    def __init__(self, folder: str | Path, port: int | None = None, extra_args: list[str] | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        exe = shutil.which("redis-server")
        if exe is None:
            raise ClusterError("redis-server not found on PATH: install it (apt-get install redis-server)")
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction", "--daemonize", "no",
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=die_with(os.getpid()))
        deadline = time.time() + timeout_s
        while not answers(self.url):
            if self.proc.poll() is not None or time.time() > deadline:
                raise ClusterError(f"redis-server did not start: {log_tail(self.folder / 'redis.log')}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LocalCluster:
    """Everything `submit` starts when no --broker is given, and stops at the end (always)."""

    CONFIG = "cluster.json"

    def __init__(self, run_dir: str | Path, devices: list[str], backend: str = "", model: str = "",
                 precision: str = "fp32", preprocess_concurrency: int | None = None, lease_ttl_s: float | None = None,
                 durable: bool = False):
        self.run_dir = Path(run_dir)
        self.devices = devices
        self.backend, self.model, self.precision = backend, model, precision
        self.concurrency = preprocess_concurrency or max(1, (os.cpu_count() or 2) - len(devices))
        self.lease_ttl_s = lease_ttl_s
        # an append-only file in the run folder: after a Ctrl-C or a crash, `resume JOB` restarts from it, and a
        # Redis that died starts again from it. Written every second (a crash loses at most the last second,
        # which the reapers recover: tasks/recovery.py), or on every write with `durable`.
        self.durable = durable
        self.redis = RedisServer(self.run_dir / "redis", extra_args=[
            "--appendonly", "yes", "--appendfsync", "always" if durable else "everysec"])
        self.procs: dict[str, subprocess.Popen] = {}
        self.spawned: dict[str, tuple] = {}  # name -> what _spawn was given, to start it again
        self.deaths: dict[str, list[float]] = {}

    def save_config(self) -> None:
        """What `resume` needs to start the same cluster again on the same Redis folder."""
        (self.run_dir / self.CONFIG).write_text(json.dumps({
            "devices": self.devices, "backend": self.backend, "model": self.model, "precision": self.precision,
            "lease_ttl_s": self.lease_ttl_s, "durable": self.durable}))

    @classmethod
    def from_folder(cls, run_dir: str | Path) -> "LocalCluster":
        c = json.loads((Path(run_dir) / cls.CONFIG).read_text())
        return cls(run_dir, c["devices"], c["backend"], c["model"], c["precision"], lease_ttl_s=c["lease_ttl_s"],
                   durable=c.get("durable", False))

    @property
    def url(self) -> str:
        return self.redis.url

    def _spawn(self, name: str, args: list[str], module: str = "workers", env_extra: dict | None = None) -> None:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "EVALUATOR_BROKER": self.url, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
        with open(logs / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", module, *args, "--broker", self.url],
                                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=env, start_new_session=True, preexec_fn=die_with(os.getpid()))
        self.spawned[name] = (args, module, env_extra)

    def start(self) -> "LocalCluster":
        self.redis.start()
        try:
            self.save_config()
            self._spawn("preprocess", ["--preprocess", "--concurrency", str(self.concurrency)])
            for device in self.devices:
                args = ["--device", device, "--precision", self.precision]
                if self.backend:
                    args += ["--backend", self.backend]
                if self.model:
                    args += ["--model", self.model]
                if self.lease_ttl_s:
                    args += ["--lease-ttl", str(self.lease_ttl_s)]
                self._spawn(device.replace(":", ""), args)
        except BaseException:
            self.stop()
            raise
        return self

    def start_dashboard(self, port: int, basic_auth: str) -> str:
        """Flower on this cluster's Redis, loopback only; returns its URL (stopped with the cluster)."""
        self._spawn("dashboard", ["dashboard", "--port", str(port), "--address", "127.0.0.1"], module="orchestrator",
                    env_extra={"FLOWER_BASIC_AUTH": basic_auth})
        deadline = time.time() + 30.0
        while True:  # the URL is printed once it answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return f"http://127.0.0.1:{port}/"
            except OSError:
                proc = self.procs["dashboard"]
                if proc.poll() is not None or time.time() > deadline:
                    tail = log_tail(self.run_dir / "logs" / "dashboard.log")
                    raise ClusterError(f"the dashboard did not start: {tail}")
                time.sleep(0.1)

    def check_alive(self) -> None:
        """Supervise: start again, with one line, a worker or the Redis that died (Redis on its append-only
        file, same port). A device whose worker died DEATHS_PER_MINUTE times in a minute is dropped (one line;
        the lease gives its shard to the others); ClusterError when no device is left, when the pool keeps
        dying, or when a worker refused its arguments (exit 2: starting it again cannot help)."""
        if self.redis.proc is not None and self.redis.proc.poll() is not None:
            code = self.redis.proc.returncode
            self.redis.start()
            say(f"redis-server exited (code {code}); started again on its append-only file")
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            tail = log_tail(self.run_dir / "logs" / f"{name}.log", 3)
            _signal_group(proc, signal.SIGKILL, even_if_exited=True)  # its pool children, if any outlived it
            if proc.returncode == USAGE_EXIT:
                raise ClusterError(f"worker {name} exited with code {proc.returncode}: {tail}")
            now = time.monotonic()
            deaths = [t for t in self.deaths.get(name, []) if now - t < 60.0] + [now]
            self.deaths[name] = deaths
            if len(deaths) < DEATHS_PER_MINUTE:
                self._spawn(name, *self.spawned[name])
                say(f"worker {name} exited with code {proc.returncode}; started again ({tail})")
                continue
            del self.procs[name]
            if name not in self.device_names:
                raise ClusterError(f"worker {name} died {len(deaths)} times in a minute: {tail}")
            say(f"device {name} dropped: its worker died {len(deaths)} times in a minute ({tail}); "
                "the other devices take its shards")
            if not any(n in self.procs for n in self.device_names):
                raise ClusterError("every device worker died 3 times in a minute: nothing left to run the job")

    @property
    def device_names(self) -> list[str]:
        return [device.replace(":", "") for device in self.devices]

    def stop(self, timeout_s: float = 15.0) -> None:
        """Warm shutdown (SIGTERM) for every worker, SIGKILL after timeout_s, then Redis."""
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.time() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        self.redis.stop()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
