"""Inference backends: each turns a batch of network inputs into the fixed-size detection contract.

`create_backend("sim:113ms")` (options in workers/backends/sim.py), `create_backend("torch",
model="x.pth", device="cpu:0")`; the torch and ascend backends are imported only when asked for,
so a device host without torch still runs onnxruntime, sim and groundtruth.
"""
from __future__ import annotations

from pathlib import Path

BACKENDS = ("groundtruth", "sim", "onnxruntime", "torch", "ascend")
MODEL_SUFFIXES = {".pth": "torch", ".onnx": "onnxruntime", ".om": "ascend"}
PRECISIONS = ("fp32", "fp16")  # fp16 only where a backend supports it (torch and onnxruntime on a GPU)


class BackendUnavailable(RuntimeError):
    """A backend this host cannot create (missing package) or a model it cannot use."""


def backend_for_model(model_path: str | Path) -> str:
    """The backend a model file's type calls for: .pth -> torch, .onnx -> onnxruntime, .om -> ascend."""
    suffix = Path(model_path).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ValueError(f"cannot tell the backend from the file type {suffix or '(none)'}: "
                         f"expected .pth, .onnx or .om, or pass --backend ({model_path})")
    return MODEL_SUFFIXES[suffix]


def check_spec(spec: str, model: str = "") -> None:
    """Raise ValueError (naming the flag) when a backend spec cannot work, before anything starts."""
    name, _, arg = spec.partition(":")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {spec!r}: choose from {', '.join(BACKENDS)} (--backend)")
    if name == "sim" and arg:
        from workers.backends.sim import parse_sim
        parse_sim(arg)
    if name in ("onnxruntime", "torch", "ascend") and not model:
        raise ValueError(f"the {name} backend needs a model file (--model)")


def check_precision(precision: str) -> None:
    """Raise ValueError (naming --precision) for a precision no backend knows, before anything starts."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose from {', '.join(PRECISIONS)} (--precision)")


def create_backend(spec: str, model: str = "", device: str = "cpu:0", precision: str = "fp32"):
    """A Backend for `spec` (`groundtruth`, `sim:113ms`, `onnxruntime`, `torch`, `ascend`), not yet loaded."""
    check_spec(spec, model)
    name, _, arg = spec.partition(":")
    if name == "groundtruth":
        from workers.backends.groundtruth import GroundTruthBackend
        return GroundTruthBackend()
    if name == "sim":
        from dataclasses import asdict

        from workers.backends.sim import SimBackend, parse_sim
        return SimBackend(**asdict(parse_sim(arg)), device=device)
    if name == "onnxruntime":
        from workers.backends.onnxruntime_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend(model, device, precision)
    if name == "torch":
        try:
            from workers.backends.torch_backend import TorchBackend
        except ImportError as exc:
            raise BackendUnavailable(f"the torch backend cannot be imported here ({exc}): "
                                     "install the torch extra, pip install -e '.[torch]'") from exc
        return TorchBackend(model, device=device, precision=precision)
    from workers.backends.ascend_backend import AscendBackend
    return AscendBackend(model, device)
