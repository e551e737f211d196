"""A simulated device: a fixed latency per batch (e.g. `sim:113ms`), answering like `groundtruth`."""
from __future__ import annotations

import re
import time

import numpy as np

from workers.backends.base import Backend, InferenceBatch
from workers.backends.groundtruth import GroundTruthBackend


def parse_latency(text: str) -> float:
    """`113ms`, `0.113s` or `113` (milliseconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", text)
    if not m:
        raise ValueError(f"bad sim latency {text!r}: expected e.g. sim:113ms (--backend)")
    value = float(m.group(1))
    return value if m.group(2) == "s" else value / 1000.0


class SimBackend(Backend):
    """Every batch takes exactly `latency_s` (the answer is computed inside that time)."""

    name = "sim"
    needs_pixels = False

    def __init__(self, latency_s: float):
        self.latency_s = latency_s
        self.answers = GroundTruthBackend()

    def infer(self, batch: InferenceBatch) -> tuple[np.ndarray, np.ndarray]:
        deadline = time.perf_counter() + self.latency_s
        out = self.answers.infer(batch)
        remaining = deadline - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        return out

    def describe(self) -> dict:
        return {"backend": self.name, "latency_ms": self.latency_s * 1000.0, "answers": "groundtruth"}
