"""Peak GPU memory of a block of work, above the level before a backend was loaded.

NVML (the nvidia-ml-py package) is sampled every 10 ms when it is installed: it sees every
allocator in the process (torch's, ONNX Runtime's arena, TensorRT's). Without it, torch's own
peak of reserved memory is used, which misses ONNX Runtime; on the CPU there is no figure.
"""
from __future__ import annotations

import contextlib
import threading

MIB = 1024 * 1024


class Reading:
    mib: float | None = None


class PeakMemory:
    """Create before loading a backend (its level is the baseline); `section()` measures one block."""

    def __init__(self, device: str):
        self.device = device
        self.nvml = None
        self.torch_device = None
        if not device.startswith("cuda"):
            return
        index = int(device.split(":")[1])
        try:
            import pynvml

            from workers.devices import nvidia_smi_id
            pynvml.nvmlInit()
            gid = nvidia_smi_id(index)
            self.nvml = pynvml
            self.handle = (pynvml.nvmlDeviceGetHandleByUUID(gid) if gid.startswith("GPU-")
                           else pynvml.nvmlDeviceGetHandleByIndex(int(gid)))
        except Exception:  # no NVML here: fall back to torch's counters
            self.nvml = None
        import torch
        if torch.cuda.is_available():
            self.torch_device = torch.device(device)
        self.base = self._used()

    def _used(self) -> float | None:
        if self.nvml is not None:
            return float(self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        if self.torch_device is not None:
            import torch
            return float(torch.cuda.memory_reserved(self.torch_device))
        return None

    @contextlib.contextmanager
    def section(self):
        reading = Reading()
        if self.nvml is None and self.torch_device is None:
            yield reading
            return
        if self.nvml is None:
            import torch
            torch.cuda.reset_peak_memory_stats(self.torch_device)
            yield reading
            reading.mib = (torch.cuda.max_memory_reserved(self.torch_device) - self.base) / MIB
            return
        peak = [self._used()]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.01):
                peak[0] = max(peak[0], self._used())
        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield reading
        finally:
            stop.set()
            thread.join()
            reading.mib = (max(peak[0], self._used()) - self.base) / MIB

    def release_cache(self) -> None:
        """Give torch's cached blocks back (after an out-of-memory error, say)."""
        if self.torch_device is not None:
            import torch
            torch.cuda.empty_cache()

    def release(self) -> None:
        """After the backend is closed: give torch's cached blocks back, so the next baseline is clean."""
        self.release_cache()
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
