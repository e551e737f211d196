"""The PyTorch model itself (eager) on CPU or a CUDA device: the reference every export is checked against.

On `cuda:N` the weights are moved once (in `load`, in the worker process), each batch goes through
pinned host memory with a non-blocking copy on a side stream (`prefetch` starts it while the device
still runs the batch before), and `--precision fp16` runs the model under autocast with the parts
listed in workers/backends/torch_precision.py kept in float32. On the CPU it runs float32 only.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from workers.backends import check_precision
from workers.backends.base import MAX_DETS, Backend, InferenceBatch


def parse_device(spec: str) -> str:
    """`cpu`, `cpu:N`, `cuda` or `cuda:N` to a torch device string; ValueError naming --device otherwise."""
    kind, _, index = spec.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ValueError(f"the torch backend runs on cpu or cuda:N, not {spec!r} (--device)")
    if kind == "cpu":
        return "cpu"
    return f"cuda:{int(index or 0)}"


class TorchBackend(Backend):
    """Weights are loaded and moved once, in `load` (in the worker process); `infer` runs under inference_mode."""

    name = "torch"
    needs_pixels = True

    def __init__(self, model_path: str | Path, device: str = "cpu", precision: str = "fp32"):
        self.model_path = str(model_path)
        self.device = parse_device(device)
        check_precision(precision)
        if precision == "fp16" and self.device == "cpu":
            raise ValueError("fp16 needs a CUDA device; the torch backend runs fp32 on cpu (--precision)")
        self.precision = precision
        self.model = None
        self.staging = None  # CudaStaging on cuda:N
        self.float32_modules: list[str] = []
        self.pid: int | None = None  # the process whose CUDA context holds the weights

    def load(self) -> None:
        import torch

        from model.checkpoint import load_detector
        if self.device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError(f"CUDA is not available in this process (--device {self.device})")
            if int(self.device.split(":")[1]) >= torch.cuda.device_count():
                raise RuntimeError(f"no such CUDA device: {torch.cuda.device_count()} visible (--device {self.device})")
            # fp32 means fp32: no TF32 rounding in cuDNN convolutions or matmuls (this process owns the device).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            # cuDNN times every algorithm for each input shape (benchmark_limit 0: all, not its first 10 guesses):
            # left to its heuristics, fp32 at batch 4 on an H200 took an FFT algorithm 9x slower than the best
            # (bench/gpu_cudnn.py). Still fp32: TF32 is off, so the choice changes speed, not precision.
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.benchmark_limit = 0
            torch.cuda.set_device(torch.device(self.device))
        model = load_detector(self.model_path, self.device)
        if self.precision == "fp16":
            from workers.backends.torch_precision import keep_float32
            self.float32_modules = keep_float32(model)
        if self.device.startswith("cuda"):
            from workers.backends.cuda_staging import CudaStaging
            self.staging = CudaStaging(torch.device(self.device))
        self.model, self.pid = model, os.getpid()

    def prefetch(self, batch: InferenceBatch) -> None:
        """Start copying this batch to the device now (pinned, non-blocking, side stream); a no-op on the CPU."""
        if self.staging is not None and batch.images is not None:
            self.staging.prefetch(batch.images, np.asarray(batch.clip_hw, dtype=np.float32))

    def infer(self, batch: InferenceBatch) -> tuple[np.ndarray, np.ndarray]:
        import torch

        if self.model is None:
            raise RuntimeError("TorchBackend.infer called before load()")
        if batch.images is None:
            raise ValueError("the torch backend needs the batch's pixels (images is None)")
        if self.staging is None:
            images = torch.from_numpy(np.ascontiguousarray(batch.images, dtype=np.float32))
            clip_hw = torch.from_numpy(np.ascontiguousarray(batch.clip_hw, dtype=np.float32))
            with torch.inference_mode():
                dets, labels = self.model(images, clip_hw)
            return (dets.float().numpy().reshape(-1, MAX_DETS, 5),
                    labels.numpy().astype(np.int64).reshape(-1, MAX_DETS))
        if self.pid != os.getpid():
            raise RuntimeError(f"the model was moved to {self.device} in process {self.pid}, not this one: "
                               "create the backend in the worker process, after any fork")
        slot = self.staging.take(batch.images, np.asarray(batch.clip_hw, dtype=np.float32))
        autocast = (torch.autocast("cuda", dtype=torch.float16) if self.precision == "fp16"
                    else contextlib.nullcontext())
        try:
            with torch.inference_mode(), torch.cuda.device(self.device), autocast:
                dets, labels = self.model(slot.images, slot.clip_hw)
        finally:
            self.staging.release(slot)  # reusable once the work queued on the compute stream is done
        # the device-to-host copies wait for the forward: the device call ends here
        return (dets.float().cpu().numpy().reshape(-1, MAX_DETS, 5),
                labels.cpu().numpy().astype(np.int64).reshape(-1, MAX_DETS))

    def describe(self) -> dict:
        import torch
        import torchvision

        facts = {"backend": self.name, "model": self.model_path, "device": self.device,
                 "precision": self.precision, "torch": torch.__version__, "torchvision": torchvision.__version__}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            facts["device_name"] = torch.cuda.get_device_name(int(self.device.split(":")[1]))
            facts["copies"] = "pinned host buffers, non-blocking copy on a side stream, next batch prefetched"
            if self.precision == "fp16":
                facts["fp16"] = "autocast float16; float32 kept in " + ", ".join(self.float32_modules)
            if self.staging is not None:
                facts["prefetched_batches"] = self.staging.prefetched
        else:
            facts["threads"] = torch.get_num_threads()
        return facts

    def close(self) -> None:
        if self.model is None:
            return
        self.model = None
        if self.staging is not None:
            self.staging.close()
            self.staging = None
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.empty_cache()
