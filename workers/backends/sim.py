"""A simulated device: a fixed latency per batch, answering like `groundtruth` or like a detector.

Spec: `sim:LATENCY[,load=none|meta|pixels][,answers=groundtruth|detector][,stall=SECONDS@DEVICE[#CALL]]`
`[,slow=FACTOR@KIND:A-B]`, e.g. `sim:950ms`, `sim:950ms,load=none`, `sim:950ms,answers=detector`,
`sim:100ms,stall=30s@cpu:3#2`, `sim:950ms,slow=2@cpu:16-31`.

- `load` says what the worker reads for it: `meta` (default) the store entry's header (the
  image file is hashed for the key), `pixels` the full network input as a real device needs
  (measures the CPU cost of loading), `none` nothing at all: the geometry comes from the
  annotation's width and height, so a job measures the orchestration alone.
- `answers` says what it returns: `groundtruth` (default) each image's own boxes (AP 1), `detector`
  up to 100 detections an image made from them (workers/backends/detector_like.py): AP below 1,
  the same for an image id in any batch, shard or device.
- `stall` makes one device's call number CALL (0-based, default 0) take SECONDS longer, once:
  a straggler.
- `slow` multiplies the latency of devices KIND:A to KIND:B by FACTOR: a mixed rack.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from workers.backends.base import Backend, InferenceBatch
from workers.backends.detector_like import DetectorLikeBackend
from workers.backends.groundtruth import GroundTruthBackend

LOAD_MODES = ("meta", "pixels", "none")
ANSWERS = {"groundtruth": GroundTruthBackend, "detector": DetectorLikeBackend}


def parse_latency(text: str) -> float:
    """`113ms`, `0.113s` or `113` (milliseconds) -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s)?\s*", text)
    if not m:
        raise ValueError(f"bad sim latency {text!r}: expected e.g. sim:113ms (--backend)")
    value = float(m.group(1))
    return value if m.group(2) == "s" else value / 1000.0


@dataclass(frozen=True)
class SimOptions:
    latency_s: float = 0.113
    load: str = "meta"
    answers: str = "groundtruth"
    stall_s: float = 0.0
    stall_device: str = ""  # "" = every device
    stall_call: int = 0
    slow_factor: float = 1.0
    slow_devices: str = ""  # KIND:A-B


def parse_sim(arg: str) -> SimOptions:
    """The part after `sim:`; ValueError naming --backend when malformed."""
    latency, *options = arg.split(",") if arg else ["113ms"]
    fields: dict = {"latency_s": parse_latency(latency or "113ms")}
    for option in options:
        key, _, value = option.partition("=")
        if key == "load" and value in LOAD_MODES:
            fields["load"] = value
        elif key == "answers" and value in ANSWERS:
            fields["answers"] = value
        elif key == "stall":
            m = re.fullmatch(r"([^@#]+)(?:@([^#]+))?(?:#(\d+))?", value)
            if not m:
                raise ValueError(f"bad sim stall {value!r}: expected e.g. stall=30s@cpu:3#2 (--backend)")
            fields.update(stall_s=parse_latency(m.group(1)), stall_device=m.group(2) or "",
                          stall_call=int(m.group(3) or 0))
        elif key == "slow" and re.fullmatch(r"[0-9]*\.?[0-9]+x?@[a-z]+:\d+-\d+", value):
            factor, _, devices = value.partition("@")
            fields.update(slow_factor=float(factor.rstrip("x")), slow_devices=devices)
        else:
            raise ValueError(f"bad sim option {option!r}: expected load=none|meta|pixels, "
                             f"answers=groundtruth|detector, stall=SECONDS@DEVICE#CALL or slow=FACTOR@KIND:A-B "
                             f"(--backend)")
    return SimOptions(**fields)


def in_range(device: str, devices: str) -> bool:
    """`cpu:3` in `cpu:0-7`."""
    if not devices or ":" not in device:
        return False
    kind, _, span = devices.partition(":")
    first, _, last = span.partition("-")
    dev_kind, _, index = device.partition(":")
    return dev_kind == kind and index.isdigit() and int(first) <= int(index) <= int(last)


class SimBackend(Backend):
    """Every batch takes exactly `latency_s` (the answer is computed inside that time)."""

    name = "sim"

    def __init__(self, latency_s: float, load: str = "meta", answers: str = "groundtruth", stall_s: float = 0.0,
                 stall_device: str = "", stall_call: int = 0, slow_factor: float = 1.0, slow_devices: str = "",
                 device: str = ""):
        self.latency_s = latency_s * (slow_factor if in_range(device, slow_devices) else 1.0)
        self.load_mode = load
        self.needs_pixels = load == "pixels"
        self.reads_images = load != "none"
        self.stall_s = stall_s if stall_s and stall_device in ("", device) else 0.0
        self.stall_call = stall_call
        self.calls = 0
        self.answers_kind = answers
        self.answers = ANSWERS[answers]()

    def infer(self, batch: InferenceBatch) -> tuple[np.ndarray, np.ndarray]:
        latency = self.latency_s + (self.stall_s if self.calls == self.stall_call else 0.0)
        self.calls += 1
        deadline = time.perf_counter() + latency
        out = self.answers.infer(batch)
        remaining = deadline - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        return out

    def describe(self) -> dict:
        out = {"backend": self.name, "latency_ms": self.latency_s * 1000.0, "answers": self.answers_kind,
               "load": self.load_mode}
        if self.stall_s:
            out["stall"] = {"seconds": self.stall_s, "call": self.stall_call}
        return out
