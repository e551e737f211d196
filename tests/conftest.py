"""Fixtures that start real processes: one redis-server per test session, Celery workers per test.

Everything started here runs on free loopback ports and is stopped at teardown, killed if it must.
Each test gets its own Redis database (a private keyspace, queues included) on the shared server.
The helpers live in real_processes.py and contract_onnx.py (import those, not this file).
"""
from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from contract_onnx import write_tiny_onnx
from orchestrator.cluster import RedisServer
from real_processes import DATABASES, Processes, fresh_db_url


def pytest_configure(config):
    """Ctrl-C reaches the processes the tests start as at a terminal, even when the suite itself was started
    in the background (`cmd &` starts it with SIGINT ignored, every child inherits that, and Python then
    raises no KeyboardInterrupt). A handler, unlike the ignore, is reset to the default by exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"), extra_args=["--databases", str(DATABASES)]).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """A Redis URL whose database no other test uses."""
    return fresh_db_url(redis_server)


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


@pytest.fixture(scope="session")
def selftest_set(tmp_path_factory):
    """The generated COCO-format set: (annotation path, image folder)."""
    from orchestrator.selftest_set import write_selftest_set
    return write_selftest_set(tmp_path_factory.mktemp("selftest_set"))


@pytest.fixture(scope="session")
def shared_cluster(redis_server, tmp_path_factory):
    """A running cluster for end-to-end tests that need no failures: a preprocessing pool, devices cpu:0 and cpu:1."""
    url = fresh_db_url(redis_server)
    procs = Processes(tmp_path_factory.mktemp("shared_cluster"))
    try:
        pool = procs.preprocess_pool(url)
        devices = [procs.device_worker(url, d) for d in ("cpu:0", "cpu:1")]
        for p in (pool, *devices):
            procs.wait_ready(p)
        yield {"url": url, "procs": procs, "devices": devices}
    finally:
        procs.stop()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
