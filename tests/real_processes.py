"""Helpers that start and watch real processes (redis-server databases, Celery workers, the CLI).

Imported by tests/conftest.py and by tests that drive processes; named uniquely so that no other
test folder's helper module can shadow it.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
import redis

from orchestrator.cluster import RedisServer, _signal_group

REPO = Path(__file__).resolve().parent.parent
DATABASES = 256
_db_numbers = itertools.count(1)


def wait_for(predicate, timeout_s: float = 30.0, poll_s: float = 0.1, what: str = "condition"):
    """Poll until predicate() is truthy; returns its value or fails the test naming `what`."""
    deadline = time.time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def fresh_db_url(server: RedisServer) -> str:
    db = next(_db_numbers) % DATABASES or next(_db_numbers)
    url = f"redis://127.0.0.1:{server.port}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


class Processes:
    """Worker and CLI processes of one test, each logging to its own file; all stopped at teardown."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: list[subprocess.Popen] = []

    def env(self, url: str) -> dict:
        return {**os.environ, "EVALUATOR_BROKER": url, "PYTHONUNBUFFERED": "1"}

    def spawn(self, name: str, args: list[str], url: str) -> subprocess.Popen:
        log_path = self.folder / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.env(url), cwd=REPO, start_new_session=True)
        proc.log_path = log_path
        self.procs.append(proc)
        return proc

    def device_worker(self, url: str, device: str, *extra: str, lease_ttl: float = 3.0,
                      name: str | None = None) -> subprocess.Popen:
        return self.spawn(name or device.replace(":", ""), ["-m", "workers", "--device", device, "--broker", url,
                                                            "--lease-ttl", str(lease_ttl), *extra], url)

    def preprocess_pool(self, url: str, concurrency: int = 1) -> subprocess.Popen:
        return self.spawn("preprocess", ["-m", "workers", "--preprocess", "--broker", url,
                                         "--concurrency", str(concurrency)], url)

    @staticmethod
    def log(proc: subprocess.Popen) -> str:
        return proc.log_path.read_text(errors="replace")

    def wait_ready(self, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
        """Until Celery says the worker is ready (its consumer is up)."""
        def ready():
            if proc.poll() is not None:
                pytest.fail(f"worker exited with {proc.returncode}: {self.log(proc)[-2000:]}")
            return " ready." in self.log(proc)
        wait_for(ready, timeout_s, what=f"worker {proc.log_path.stem} to be ready")

    def stop(self) -> None:
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.time() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def run_cli(*args: str, cwd: Path | None = None, timeout_s: float = 300, url: str | None = None):
    """`python -m orchestrator ARGS` to completion; CompletedProcess with text stdout/stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if url:
        env["EVALUATOR_BROKER"] = url
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout_s)


def http(url: str, method: str = "GET", login: str | None = None) -> tuple[int, Message | dict, bytes]:
    """(HTTP status, headers, body) of one request, with a basic-auth `user:password`; (0, {}, b"") while nothing
    listens."""
    request = urllib.request.Request(url, data=b"" if method == "POST" else None, method=method)
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}, b""


def get_json(url: str, login: str | None = None):
    """(HTTP status, the JSON body or None)."""
    status, _, body = http(url, login=login)
    return status, json.loads(body or b"null") if 200 <= status < 300 else None
