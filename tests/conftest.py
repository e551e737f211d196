"""Fixtures that start real processes: one redis-server per test session, Celery workers per test.

Everything started here runs on free loopback ports and is stopped at teardown, killed if it must.
Each test gets its own Redis database (a private keyspace, queues included) on the shared server.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from orchestrator.cluster import RedisServer

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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"), extra_args=["--databases", str(DATABASES)]).start()
    yield server
    server.stop()


def fresh_db_url(server: RedisServer) -> str:
    db = next(_db_numbers) % DATABASES or next(_db_numbers)
    url = f"redis://127.0.0.1:{server.port}/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def redis_url(redis_server) -> str:
    """A Redis URL whose database no other test uses."""
    return fresh_db_url(redis_server)


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
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


def run_cli(*args: str, cwd: Path | None = None, timeout_s: float = 300, url: str | None = None):
    """`python -m orchestrator ARGS` to completion; CompletedProcess with text stdout/stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if url:
        env["EVALUATOR_BROKER"] = url
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=timeout_s)


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


def write_tiny_onnx(path: Path, fixed_batch: int | None = None, with_clip: bool = True) -> Path:
    """An ONNX file keeping the detection contract: one box per image, the top-left quarter of its clip
    region, score 0.9, label 2 (COCO category 3); the other 99 rows are padding."""
    import onnx
    from onnx import TensorProto, helper

    batch = fixed_batch or "B"
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, "H", "W"])]
    if with_clip:
        inputs.append(helper.make_tensor_value_info("clip_hw", TensorProto.FLOAT, [batch, 2]))
    const = lambda name, dtype, dims, vals: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, dims, vals))
    labels = [2] + [-1] * 99
    nodes = [
        const("i0", TensorProto.INT64, [1], [0]), const("i1", TensorProto.INT64, [1], [1]),
        const("half", TensorProto.FLOAT, [], [0.5]), const("zero", TensorProto.FLOAT, [], [0.0]),
        const("p9", TensorProto.FLOAT, [], [0.9]), const("tile99", TensorProto.INT64, [3], [1, 99, 1]),
        const("labels1", TensorProto.INT64, [1, 100], labels),
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "i1"], ["mean1"]),  # [B,1], keeps `input` in the graph
        helper.make_node("Mul", ["mean1", "zero"], ["z"]),
        helper.make_node("Add", ["z", "p9"], ["score"]),
    ]
    if with_clip:
        nodes += [helper.make_node("Gather", ["clip_hw", "i1"], ["cw"], axis=1),
                  helper.make_node("Gather", ["clip_hw", "i0"], ["ch"], axis=1)]
    else:  # without clip_hw the graph clips to its input: use the input's H and W
        nodes += [helper.make_node("Shape", ["input"], ["ishape"]),
                  const("i2", TensorProto.INT64, [1], [2]), const("i3", TensorProto.INT64, [1], [3]),
                  helper.make_node("Gather", ["ishape", "i3"], ["w64"]), helper.make_node("Gather", ["ishape", "i2"], ["h64"]),
                  helper.make_node("Cast", ["w64"], ["w1"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", ["h64"], ["h1"], to=TensorProto.FLOAT),
                  helper.make_node("Add", ["z", "w1"], ["cw"]), helper.make_node("Add", ["z", "h1"], ["ch"])]
    nodes += [
        helper.make_node("Mul", ["cw", "half"], ["hw"]), helper.make_node("Mul", ["ch", "half"], ["hh"]),
        helper.make_node("Concat", ["z", "z", "hw", "hh", "score"], ["row"], axis=1),
        helper.make_node("Unsqueeze", ["row", "i1"], ["row3"]),
        helper.make_node("Mul", ["row3", "zero"], ["row0"]),
        helper.make_node("Tile", ["row0", "tile99"], ["pad"]),
        helper.make_node("Concat", ["row3", "pad"], ["dets"], axis=1),
        helper.make_node("Shape", ["score"], ["sshape"]),
        helper.make_node("Slice", ["sshape", "i0", "i1"], ["bdim"]),
        helper.make_node("Concat", ["bdim", "i1"], ["lrep"], axis=0),
        helper.make_node("Tile", ["labels1", "lrep"], ["labels"]),
    ]
    outputs = [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [batch, 100, 5]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [batch, 100])]
    graph = helper.make_graph(nodes, "tiny_detector", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("onnx") / "tiny.onnx")
