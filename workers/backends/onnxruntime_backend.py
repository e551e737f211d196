"""Any ONNX file that keeps the detection contract (inputs `input`, optional `clip_hw`; outputs `dets`, `labels`).

On `cuda:N` the provider is chosen by workers/backends/ort_providers.py (TensorRT over CUDA when it
can run) and the batch goes through IO binding: the inputs are copied once into device buffers that
are reused from batch to batch, the outputs once back into host memory.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from workers.backends.base import MAX_DETS, Backend, InferenceBatch
from workers.backends.ort_providers import CUDA, choose_providers

log = logging.getLogger("workers.backends.onnxruntime")
OUTPUTS = ("dets", "labels")


def providers_for(device: str, available: list[str], precision: str = "fp32", **options) -> list:
    """ONNX Runtime providers for `cpu:N` / `cuda:N`, from what this installation offers."""
    return choose_providers(device, available, precision, **options).providers


class BoundRun:
    """One session's IO binding: a device buffer per input (reused while its shape holds), outputs bound to the host."""

    def __init__(self, session, device_type: str, device_id: int):
        self.session = session
        self.device_type = device_type
        self.device_id = device_id
        self.binding = session.io_binding()
        self.buffers: dict[str, object] = {}  # input name -> OrtValue on the device

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        for name, array in feeds.items():
            value = self.buffers.get(name)
            if value is None or tuple(value.shape()) != array.shape:
                value = ort.OrtValue.ortvalue_from_shape_and_type(list(array.shape), array.dtype, self.device_type,
                                                                  self.device_id)
                self.buffers[name] = value
            value.update_inplace(array)  # the one host-to-device copy of this input
            self.binding.bind_ortvalue_input(name, value)
        for name in OUTPUTS:
            self.binding.bind_output(name, "cpu")  # written to host memory: the one device-to-host copy
        self.session.run_with_iobinding(self.binding)
        return [v.numpy() for v in self.binding.get_outputs()]


class OnnxRuntimeBackend(Backend):
    """The session is created in `load`, in the worker process (never before a fork)."""

    name = "onnxruntime"
    needs_pixels = True

    def __init__(self, model_path: str | Path, device: str = "cpu:0", precision: str = "fp32"):
        self.model_path = str(model_path)
        self.device = device
        self.precision = precision
        self.session = None
        self.input_name = "input"
        self.feeds_clip = False
        self.providers: list[str] = []
        self.provider_line = ""
        self.bound: BoundRun | None = None
        self.pid: int | None = None  # the process that created the session
        self.fixed_hw: tuple[int, int] | None = None  # None: any height and width (an mmdet-mode export)

    def load(self) -> None:
        import onnxruntime as ort

        if not Path(self.model_path).is_file():
            raise FileNotFoundError(f"model file not found ({self.model_path})")
        choice = choose_providers(self.device, ort.get_available_providers(), self.precision)
        if choice.runs != "CPUExecutionProvider" and self.precision == "fp32":
            # TensorRT has no per-session TF32 switch; fp32 means fp32 (this process owns the device)
            os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
        if choice.cache_dir:
            os.makedirs(choice.cache_dir, exist_ok=True)
        self.session = ort.InferenceSession(self.model_path, providers=choice.providers)
        self.pid = os.getpid()
        self.providers = self.session.get_providers()
        self.provider_line = choice.line(self.providers)
        if choice.io_device == "cuda" and CUDA not in self.providers:
            raise RuntimeError(f"onnxruntime could not start {CUDA} on {self.device}; it offers only "
                               f"{', '.join(self.providers)} (--device)")
        log.info("%s", self.provider_line)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if not set(OUTPUTS) <= outputs:
            raise ValueError(f"ONNX outputs {sorted(outputs)} lack dets/labels ({self.model_path})")
        self.input_name = "input" if "input" in inputs else next(iter(inputs))
        self.feeds_clip = "clip_hw" in inputs
        shape = inputs[self.input_name].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.fixed_hw = tuple(shape[2:4]) if all(isinstance(d, int) and d > 0 for d in shape[2:4]) else None
        if choice.io_device == "cuda":
            self.bound = BoundRun(self.session, "cuda", choice.device_id)

    def infer(self, batch: InferenceBatch) -> tuple[np.ndarray, np.ndarray]:
        if self.pid != os.getpid():
            raise RuntimeError(f"the onnxruntime session was created in process {self.pid}, not this one: "
                               "create the backend in the worker process, after any fork")
        if self.fixed_hw is not None and tuple(batch.images.shape[2:]) != self.fixed_hw:
            h, w = self.fixed_hw
            raise ValueError(f"the ONNX graph's input is fixed at {h}x{w}, the batch is "
                             f"{batch.images.shape[2]}x{batch.images.shape[3]}: export it with `pth2onnx --size-mode "
                             f"mmdet` for mmdet-mode jobs, or run --size-mode static --static-size {h} "
                             f"({self.model_path})")
        feeds = {self.input_name: np.ascontiguousarray(batch.images, dtype=np.float32)}
        if self.feeds_clip:
            feeds["clip_hw"] = np.ascontiguousarray(batch.clip_hw, dtype=np.float32)
        if self.bound is not None:
            dets, labels = self.bound.run(feeds)
        else:
            dets, labels = self.session.run(list(OUTPUTS), feeds)
        return (np.asarray(dets, dtype=np.float32).reshape(-1, MAX_DETS, 5),
                np.asarray(labels).astype(np.int64).reshape(-1, MAX_DETS))

    def describe(self) -> dict:
        facts = {"backend": self.name, "model": self.model_path, "providers": self.providers,
                 "fixed_batch": self.fixed_batch, "input_hw": list(self.fixed_hw) if self.fixed_hw else "any",
                 "precision": self.precision}
        if self.provider_line:
            facts["provider_choice"] = self.provider_line
        return facts

    def close(self) -> None:
        self.bound = None
        self.session = None
