"""Any ONNX file that keeps the detection contract (inputs `input`, optional `clip_hw`; outputs `dets`, `labels`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from workers.backends.base import MAX_DETS, Backend, InferenceBatch


def providers_for(device: str, available: list[str]) -> list:
    """ONNX Runtime providers for `cpu:N` / `cuda:N`, from what this installation offers."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda" and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]
    raise ValueError(f"ONNX Runtime cannot run on {device}: available providers {', '.join(available)} (--device)")


class OnnxRuntimeBackend(Backend):
    """The session is created in `load`, in the worker process (never before a fork)."""

    name = "onnxruntime"
    needs_pixels = True

    def __init__(self, model_path: str | Path, device: str = "cpu:0"):
        self.model_path = str(model_path)
        self.device = device
        self.session = None
        self.input_name = "input"
        self.feeds_clip = False
        self.providers: list[str] = []

    def load(self) -> None:
        import onnxruntime as ort

        if not Path(self.model_path).is_file():
            raise FileNotFoundError(f"model file not found ({self.model_path})")
        providers = providers_for(self.device, ort.get_available_providers())
        self.session = ort.InferenceSession(self.model_path, providers=providers)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if not {"dets", "labels"} <= outputs:
            raise ValueError(f"ONNX outputs {sorted(outputs)} lack dets/labels ({self.model_path})")
        self.input_name = "input" if "input" in inputs else next(iter(inputs))
        self.feeds_clip = "clip_hw" in inputs
        batch_dim = inputs[self.input_name].shape[0]
        self.fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.providers = self.session.get_providers()

    def infer(self, batch: InferenceBatch) -> tuple[np.ndarray, np.ndarray]:
        feeds = {self.input_name: np.ascontiguousarray(batch.images, dtype=np.float32)}
        if self.feeds_clip:
            feeds["clip_hw"] = np.ascontiguousarray(batch.clip_hw, dtype=np.float32)
        dets, labels = self.session.run(["dets", "labels"], feeds)
        return (np.asarray(dets, dtype=np.float32).reshape(-1, MAX_DETS, 5),
                np.asarray(labels).astype(np.int64).reshape(-1, MAX_DETS))

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_path, "providers": self.providers,
                "fixed_batch": self.fixed_batch}

    def close(self) -> None:
        self.session = None
