"""Which devices this host has (cpu, cuda via ONNX Runtime / nvidia-smi, npu via npu-smi), and whether they are idle."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

DEVICE_KINDS = ("cpu", "cuda", "npu")
IDLE_MEMORY_MB = 1024  # a card using more than this before we start is not idle
IDLE_UTILISATION = 10  # percent


def parse_device(device: str) -> tuple[str, int]:
    """`cuda:1` -> ("cuda", 1); raises ValueError naming the flag."""
    m = re.fullmatch(r"(cpu|cuda|npu):(\d+)", device.strip())
    if not m:
        raise ValueError(f"bad device {device!r}: expected cpu:N, cuda:N or npu:N (--device)")
    return m.group(1), int(m.group(2))


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def parse_npu_smi_devices(text: str) -> list[int]:
    """Logical device ids from `npu-smi info`: the row after each `| <npu> <name> |` row is `| <chip> <device> |`."""
    ids, after_name = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.lstrip().startswith("|") or not cells or not cells[0]:
            after_name = False
            continue
        tokens = cells[0].split()
        if len(tokens) == 2 and tokens[0].isdigit() and not tokens[1].isdigit():
            after_name = True
        elif after_name and len(tokens) == 2 and all(t.isdigit() for t in tokens):
            ids.append(int(tokens[1]))
            after_name = False
        else:
            after_name = False
    return ids


def cuda_devices() -> list[str]:
    """`cuda:N` for each GPU nvidia-smi lists, when ONNX Runtime or torch could use it."""
    out = _run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"])
    if not out:
        return []
    try:
        import onnxruntime as ort
        usable = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        usable = False
    if not usable:
        import importlib.util
        usable = importlib.util.find_spec("torch") is not None
    return [f"cuda:{int(line)}" for line in out.split() if line.strip().isdigit()] if usable else []


def npu_devices() -> list[str]:
    out = _run(["npu-smi", "info"])
    return [f"npu:{i}" for i in parse_npu_smi_devices(out)] if out else []


def discover() -> list[str]:
    """Accelerators when there are any, else `cpu:0` (one CPU worker: it would only slow the tail)."""
    found = npu_devices() + cuda_devices()
    return found or ["cpu:0"]


def attest(device: str) -> dict:
    """Is the device idle before we take it? {"idle": bool | None, "detail": str} for the report."""
    kind, index = parse_device(device)
    if kind == "cuda":
        out = _run(["nvidia-smi", "-i", str(index), "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits"])
        procs = _run(["nvidia-smi", "-i", str(index), "--query-compute-apps=pid", "--format=csv,noheader"])
        if out is None:
            return {"idle": None, "detail": "nvidia-smi not available"}
        util, mem = (int(float(x)) for x in out.strip().split(",")[:2])
        others = [p for p in (procs or "").split() if p.isdigit() and int(p) != os.getpid()]
        idle = util <= IDLE_UTILISATION and mem <= IDLE_MEMORY_MB and not others
        return {"idle": idle, "detail": f"utilisation {util} %, memory {mem} MiB, other processes {len(others)}"}
    if kind == "npu":
        out = _run(["npu-smi", "info"])
        if out is None:
            return {"idle": None, "detail": "npu-smi not available"}
        listed = out.split("Process id", 1)[1] if "Process id" in out else ""
        rows = [line for line in listed.splitlines() if re.match(r"\|\s*\d+\s+\d+\s*\|\s*\d+", line)]
        return {"idle": not rows, "detail": f"npu-smi: {len(rows)} NPU processes on this host"}
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"idle": None, "detail": f"cpu: not attested (load average {load1:.2f})" if load1 is not None else "cpu"}
