"""ONNX Runtime on GPUs, the parts a CPU can check: the provider choice and its one log line (available
providers faked), IO binding (run here with host buffers), fp16 refusals."""
from __future__ import annotations

import logging
import os

import numpy as np
import onnxruntime as ort
import pytest

from workers.backends import create_backend, onnxruntime_backend
from workers.backends.base import InferenceBatch
from workers.backends.onnxruntime_backend import BoundRun, OnnxRuntimeBackend
from workers.backends.ort_providers import CPU, CUDA, TENSORRT, choose_providers

ALL = [TENSORRT, CUDA, CPU]


def batch_of(n: int) -> InferenceBatch:
    images = np.random.default_rng(n).normal(size=(n, 3, 64, 96)).astype(np.float32)
    clip = np.tile(np.array([[50, 80]], np.float32), (n, 1))
    return InferenceBatch(images=images, clip_hw=clip, metas=[], image_ids=list(range(n)))


@pytest.fixture
def tf32_env():
    """load() sets NVIDIA_TF32_OVERRIDE for fp32 on a GPU; put it back as it was."""
    before = os.environ.get("NVIDIA_TF32_OVERRIDE")
    os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
    yield
    os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
    if before is not None:
        os.environ["NVIDIA_TF32_OVERRIDE"] = before


def names(providers) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def test_tensorrt_first_when_it_can_run(tmp_path):
    choice = choose_providers("cuda:1", ALL, "fp16", tensorrt_problem=lambda: None, cache_dir=str(tmp_path))
    assert names(choice.providers) == ALL and choice.runs == TENSORRT and choice.io_device == "cuda"
    trt, cuda = dict(choice.providers[0][1]), dict(choice.providers[1][1])
    assert trt["device_id"] == cuda["device_id"] == 1 and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path)
    line = choice.line()
    assert line.startswith(f"onnxruntime on cuda:1: {TENSORRT} runs (fp16, engine cache {tmp_path}")
    assert f"{CUDA} (runs only the nodes TensorRT does not take)" in line and "\n" not in line


@pytest.mark.parametrize("available,problem,allow,why", [
    (ALL, "the TensorRT libraries are not installed: no libnvinfer", None, "no libnvinfer"),
    ([CUDA, CPU], None, None, "not in this onnxruntime build"),
    (ALL, None, False, "turned off (EVALUATOR_TENSORRT=0)"),
])
def test_cuda_alone_says_why_tensorrt_was_not_taken(available, problem, allow, why):
    choice = choose_providers("cuda:0", available, "fp32", tensorrt_problem=lambda: problem, allow_tensorrt=allow)
    assert names(choice.providers) == [CUDA, CPU] and choice.runs == CUDA
    assert choice.providers[0][1]["use_tf32"] == 0  # fp32 means no TF32 in cuBLAS/cuDNN
    line = choice.line()
    assert f"{CUDA} runs (fp32, TF32 off, IO binding: one copy in, one copy out per batch)" in line
    assert f"{TENSORRT} (" in line and why in line


def test_environment_switch_turns_tensorrt_off(monkeypatch):
    monkeypatch.setenv("EVALUATOR_TENSORRT", "0")
    assert choose_providers("cuda:0", ALL, tensorrt_problem=lambda: None).runs == CUDA


def test_cpu_device_takes_no_gpu_provider():
    choice = choose_providers("cpu:0", ALL)
    assert choice.providers == [CPU] and choice.io_device == "cpu"
    assert choice.line() == (f"onnxruntime on cpu:0: {CPU} runs (fp32); not taken: {TENSORRT} (the device is cpu:0, "
                             f"not a GPU); {CUDA} (the device is cpu:0, not a GPU)")


def test_session_without_the_requested_provider_is_reported():
    choice = choose_providers("cuda:0", ALL, tensorrt_problem=lambda: None, cache_dir="/c")
    line = choice.line([CUDA, CPU])  # onnxruntime dropped TensorRT while creating the session
    assert line.startswith(f"onnxruntime on cuda:0: {CUDA} runs (fp32, TF32 off")
    assert f"{TENSORRT} (requested, but onnxruntime could not start it" in line
    assert f"{CUDA} (runs only" not in line


@pytest.mark.parametrize("device,available,flag,words", [
    ("cpu:0", ALL, "--precision", "fp16 needs a GPU"),
    ("cuda:0", [CUDA, CPU], "--precision", "fp16 with onnxruntime needs TensorRT"),
    ("cuda:0", [CPU], "--device", "available providers CPUExecutionProvider"),
    ("npu:0", ALL, "--device", "cpu:N or cuda:N"),
])
def test_refusals_are_one_line_naming_the_flag(device, available, flag, words):
    with pytest.raises(ValueError) as err:
        choose_providers(device, available, "fp16" if flag == "--precision" else "fp32")
    message = str(err.value)
    assert words in message and message.endswith(f"({flag})") and "\n" not in message


def test_fp16_on_cpu_is_refused_through_create_backend(tiny_onnx):
    backend = create_backend("onnxruntime", model=str(tiny_onnx), device="cpu:0", precision="fp16")
    with pytest.raises(ValueError, match=r"fp16 needs a GPU.*\(--precision\)"):
        backend.load()


def test_worker_logs_one_line_on_load(tiny_onnx, monkeypatch, caplog):
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ALL))
    backend = OnnxRuntimeBackend(tiny_onnx, "cpu:0")
    with caplog.at_level(logging.INFO, logger="workers.backends.onnxruntime"):
        backend.load()
    lines = [r.getMessage() for r in caplog.records if r.name == "workers.backends.onnxruntime"]
    assert lines == [backend.provider_line] and lines[0].startswith(f"onnxruntime on cpu:0: {CPU} runs")
    assert backend.describe()["provider_choice"] == lines[0] and backend.bound is None


def test_cuda_requested_but_only_cpu_started_fails_the_load(tiny_onnx, monkeypatch, tf32_env):
    """This onnxruntime has no CUDA: a session asked for it falls back to the CPU, which a cuda:N worker refuses."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    backend = OnnxRuntimeBackend(tiny_onnx, "cuda:0")
    with pytest.raises(RuntimeError, match=rf"could not start {CUDA} on cuda:0.*\(--device\)"):
        backend.load()


class CpuBound(BoundRun):
    """The IO binding code path with host buffers standing in for device ones (no GPU here)."""

    runs = 0

    def __init__(self, session, device_type, device_id):
        assert (device_type, device_id) == ("cuda", 2)
        super().__init__(session, "cpu", 0)

    def run(self, feeds):
        CpuBound.runs += 1
        return super().run(feeds)


def test_gpu_load_binds_io_and_reports_a_dropped_tensorrt(tiny_onnx, monkeypatch, caplog, tf32_env, tmp_path):
    requested = []

    class Session(ort.InferenceSession):
        """A real CPU session that reports what a GPU host whose TensorRT failed to start would report."""

        def __init__(self, path, providers):
            requested.append(providers)
            super().__init__(path, providers=[CPU])

        def get_providers(self):
            return [CUDA, CPU]

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(ALL))
    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setattr("workers.backends.ort_providers.tensorrt_missing", lambda: None)
    monkeypatch.setenv("EVALUATOR_TRT_CACHE", str(tmp_path / "engines"))
    monkeypatch.setattr(onnxruntime_backend, "BoundRun", CpuBound)
    backend = OnnxRuntimeBackend(tiny_onnx, "cuda:2")
    with caplog.at_level(logging.INFO, logger="workers.backends.onnxruntime"):
        backend.load()
    assert names(requested[0]) == ALL and (tmp_path / "engines").is_dir()
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "workers.backends.onnxruntime"]
    assert line.startswith(f"onnxruntime on cuda:2: {CUDA} runs") and "could not start" in line
    batch = batch_of(2)
    dets, labels = backend.infer(batch)
    assert CpuBound.runs == 1 and dets.shape == (2, 100, 5) and labels.dtype == np.int64
    assert dets[:, 0, 2].tolist() == [40, 40] and (labels[:, 0] == 2).all()


def test_bound_run_equals_a_plain_run_and_reuses_its_buffers(tiny_onnx):
    session = ort.InferenceSession(str(tiny_onnx), providers=[CPU])
    bound = BoundRun(session, "cpu", 0)
    for n in (2, 2, 3):
        batch = batch_of(n)
        feeds = {"input": batch.images, "clip_hw": batch.clip_hw}
        before = dict(bound.buffers)
        got = bound.run(feeds)
        want = session.run(["dets", "labels"], feeds)
        assert all(np.array_equal(a, b) for a, b in zip(got, want)) and got[1].dtype == np.int64
        if n == 2 and before:
            assert bound.buffers["input"] is before["input"]  # same shape: the device buffer is reused
    assert tuple(bound.buffers["input"].shape()) == (3, 3, 64, 96)  # a new shape got a new buffer


def test_a_session_is_used_only_in_the_process_that_created_it(tiny_onnx):
    backend = OnnxRuntimeBackend(tiny_onnx, "cpu:0")
    backend.load()
    backend.infer(batch_of(1))
    backend.pid = os.getpid() + 1  # as in a child forked after load()
    with pytest.raises(RuntimeError, match="create the backend in the worker process, after any fork"):
        backend.infer(batch_of(1))
