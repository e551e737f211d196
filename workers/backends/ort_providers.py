"""Which ONNX Runtime execution provider runs a graph on `cpu:N` / `cuda:N`, and the one line that says why.

On `cuda:N`: TensorRT when this onnxruntime build has its provider and the TensorRT libraries load
(engines cached on disk, fp16 on request), with CUDA under it for the nodes TensorRT does not take;
else CUDA alone. CPU stays last in every list: ONNX Runtime puts there only the nodes no GPU
provider implements. fp32 means no TF32 (`use_tf32=0` for CUDA; NVIDIA_TF32_OVERRIDE=0 for
TensorRT, which has no such option). `EVALUATOR_TENSORRT=0` leaves TensorRT out.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path

from workers.backends import check_precision

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so")


def tensorrt_missing() -> str | None:
    """None when the TensorRT runtime library loads in this process, else why not (one phrase)."""
    folders = [""]
    try:
        import tensorrt_libs  # the pip wheel keeps libnvinfer here, outside the loader's path
        folders.append(os.path.dirname(tensorrt_libs.__file__) + os.sep)
    except ImportError:
        pass
    for folder in folders:
        for name in TENSORRT_LIBRARIES:
            try:
                ctypes.CDLL(folder + name)
                return None
            except OSError:
                continue
    return "the TensorRT libraries are not installed: no libnvinfer"


def tensorrt_cache_dir() -> str:
    """$EVALUATOR_TRT_CACHE, else ~/.cache/dcn-evaluator/tensorrt (engines are keyed by model and shapes)."""
    return os.environ.get("EVALUATOR_TRT_CACHE") or str(Path.home() / ".cache" / "dcn-evaluator" / "tensorrt")


@dataclass(frozen=True)
class ProviderChoice:
    """The providers list for InferenceSession, the one meant to run the graph, and why the others were not taken."""

    device: str
    providers: list
    runs: str
    not_taken: dict[str, str] = field(default_factory=dict)
    io_device: str = "cpu"  # where inputs and outputs are bound: "cuda" on a GPU
    device_id: int = 0
    precision: str = "fp32"
    cache_dir: str = ""

    def line(self, session_providers: list[str] | None = None) -> str:
        """One log line: which provider runs and why the others were not taken (after the session, what it got)."""
        runs, not_taken = self.runs, dict(self.not_taken)
        got = session_providers if session_providers is not None else [p if isinstance(p, str) else p[0]
                                                                       for p in self.providers]
        if runs not in got:
            fallback = next(p for p in (CUDA, CPU) if p in got)
            not_taken.pop(fallback, None)
            not_taken[runs] = "requested, but onnxruntime could not start it (its warning above says why)"
            runs = fallback
        how = {TENSORRT: f"{self.precision}, engine cache {self.cache_dir}",
               CUDA: f"{self.precision}, TF32 off" if self.precision == "fp32" else self.precision,
               CPU: self.precision}[runs]
        io = ", IO binding: one copy in, one copy out per batch" if self.io_device == "cuda" and runs != CPU else ""
        reasons = "; ".join(f"{p} ({why})" for p, why in not_taken.items())
        return f"onnxruntime on {self.device}: {runs} runs ({how}{io}); not taken: {reasons or 'none'}"


def choose_providers(device: str, available: list[str], precision: str = "fp32",
                     tensorrt_problem=None, allow_tensorrt: bool | None = None,
                     cache_dir: str | None = None) -> ProviderChoice:
    """The providers for `device` from what this installation offers; ValueError naming the flag when none can."""
    kind, _, index = device.partition(":")
    device_id = int(index or 0) if index.isdigit() else 0
    check_precision(precision)
    gpu = [p for p in (TENSORRT, CUDA) if p in available]
    if kind == "cpu":
        if precision != "fp32":
            raise ValueError("fp16 needs a GPU; onnxruntime runs fp32 on cpu (--precision)")
        return ProviderChoice(device, [CPU], CPU, {p: f"the device is {device}, not a GPU" for p in gpu})
    if kind != "cuda" or not index.isdigit():
        raise ValueError(f"ONNX Runtime runs on cpu:N or cuda:N, not {device!r} (--device)")
    if CUDA not in available:
        raise ValueError(f"ONNX Runtime cannot run on {device}: available providers {', '.join(available)} "
                         f"(install onnxruntime-gpu) (--device)")
    if allow_tensorrt is None:
        allow_tensorrt = os.environ.get("EVALUATOR_TENSORRT", "1") != "0"
    not_taken = {}
    if not allow_tensorrt:
        not_taken[TENSORRT] = "turned off (EVALUATOR_TENSORRT=0)"
    elif TENSORRT not in available:
        not_taken[TENSORRT] = "not in this onnxruntime build"
    else:
        problem = (tensorrt_problem or tensorrt_missing)()
        if problem:
            not_taken[TENSORRT] = problem
    if precision == "fp16" and TENSORRT in not_taken:
        raise ValueError(f"fp16 with onnxruntime needs TensorRT, which cannot run here ({not_taken[TENSORRT]}); "
                         f"use fp32, or the torch backend for fp16 (--precision)")
    cuda = (CUDA, {"device_id": device_id, "use_tf32": 0 if precision == "fp32" else 1,
                   "cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": 1})
    not_taken[CPU] = "kept only for nodes no GPU provider implements"
    if TENSORRT in not_taken:
        return ProviderChoice(device, [cuda, CPU], CUDA, not_taken, "cuda", device_id, precision)
    cache = cache_dir or tensorrt_cache_dir()
    tensorrt = (TENSORRT, {"device_id": device_id, "trt_fp16_enable": precision == "fp16",
                           "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                           "trt_timing_cache_enable": True, "trt_timing_cache_path": cache})
    not_taken = {CUDA: "runs only the nodes TensorRT does not take", **not_taken}
    return ProviderChoice(device, [tensorrt, cuda, CPU], TENSORRT, not_taken, "cuda", device_id, precision, cache)
