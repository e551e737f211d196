"""Which devices this host has (cpu, cuda via nvidia-smi + ONNX Runtime / torch, npu via npu-smi), and whether they are idle."""
from __future__ import annotations

import os
import re

from workers import npu_host
from workers.vendor_tools import run_tool

IDLE_MEMORY_MB = 1024  # a card using more than this before we start is not idle
IDLE_UTILISATION = 10  # percent


def parse_device(device: str) -> tuple[str, int]:
    """`cuda:1` -> ("cuda", 1); raises ValueError naming the flag."""
    m = re.fullmatch(r"(cpu|cuda|npu):(\d+)", device.strip())
    if not m:
        raise ValueError(f"bad device {device!r}: expected cpu:N, cuda:N or npu:N (--device)")
    return m.group(1), int(m.group(2))


def _number(cell: str) -> float | None:
    """A nvidia-smi csv cell (`nounits`) as a number; None for `[N/A]`, `[Not Supported]` and the like."""
    try:
        return float(cell.strip())
    except ValueError:
        return None


def parse_nvidia_smi_gpus(text: str) -> list[dict]:
    """`--query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits` rows -> [{index, uuid, name, memory_mib}].

    Missing trailing fields are left out (a row may hold the index alone).
    """
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if not cells[0].isdigit():
            continue
        gpu: dict = {"index": int(cells[0])}
        for key, cell in zip(("uuid", "name", "memory_mib"), cells[1:]):
            gpu[key] = _number(cell) if key == "memory_mib" else cell
        gpus.append(gpu)
    return gpus


def parse_compute_apps(text: str) -> list[dict]:
    """`--query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits` -> [{pid, name, memory_mib}]."""
    apps = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if not cells[0].isdigit():
            continue  # blank, or "No running processes found"
        apps.append({"pid": int(cells[0]), "name": cells[1] if len(cells) > 1 else "",
                     "memory_mib": _number(cells[2]) if len(cells) > 2 else None})
    return apps


def visible_cuda_ids() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as nvidia-smi ids (indices or UUIDs), in the order cuda:0, cuda:1, ...; None when unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    ids = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry == "-1" or entry.startswith("-"):
            break  # CUDA stops at the first invalid entry
        ids.append(entry)
    return ids


def nvidia_smi_id(index: int) -> str:
    """The id nvidia-smi knows this process's cuda:N by (nvidia-smi ignores CUDA_VISIBLE_DEVICES, CUDA does not)."""
    visible = visible_cuda_ids()
    if visible is None:
        return str(index)
    if index >= len(visible):
        raise ValueError(f"cuda:{index} is not visible: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} "
                         f"(--device)")
    return visible[index]


def torch_has_cuda() -> bool:
    """A CUDA build of torch is installed (read from its metadata: discovery never imports torch or touches CUDA)."""
    from importlib import metadata
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False
    return "+cpu" not in version


def ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def cuda_devices() -> list[str]:
    """`cuda:N` for each GPU nvidia-smi lists (as CUDA_VISIBLE_DEVICES numbers them), when ONNX Runtime or torch can use it."""
    out = run_tool(["nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"])
    if not out or not (ort_has_cuda() or torch_has_cuda()):
        return []
    gpus = parse_nvidia_smi_gpus(out)
    visible = visible_cuda_ids()
    if visible is None:
        return [f"cuda:{g['index']}" for g in gpus]
    known = {str(g["index"]) for g in gpus} | {g.get("uuid", "") for g in gpus}
    count = 0
    for entry in visible:  # CUDA numbers the visible cards in this order and stops at the first unknown one
        if entry not in known and not any(u.startswith(entry) for u in known if u.startswith("GPU-")):
            break
        count += 1
    return [f"cuda:{i}" for i in range(count)]


def discover() -> list[str]:
    """Accelerators when there are any, else `cpu:0` (one CPU worker: it would only slow the tail).

    NPUs of a kind this model cannot run on are left out (`unusable_devices` says which and why)."""
    found = npu_host.discover()[0] + cuda_devices()
    return found or ["cpu:0"]


def unusable_devices() -> dict[str, str]:
    """Devices of this host left out by `discover`, with the reason."""
    return npu_host.discover()[1]


def cuda_attestation(gpu_text: str | None, apps_text: str | None, own_pid: int,
                     memory_limit_mib: float = IDLE_MEMORY_MB, utilisation_limit: float = IDLE_UTILISATION) -> dict:
    """Idle verdict from nvidia-smi's answers: no other compute process, memory and utilisation under their limits.

    `idle` is None (not attested) when nvidia-smi did not answer or a figure it needs is unreadable,
    unless what it did read already shows the card busy.
    """
    rule = (f"idle = no other compute process, memory used <= {memory_limit_mib:g} MiB, "
            f"utilisation <= {utilisation_limit:g} %")
    if gpu_text is None:
        return {"idle": None, "detail": "nvidia-smi not available", "rule": rule}
    cells = [c.strip() for c in gpu_text.strip().splitlines()[0].split(",")] if gpu_text.strip() else []
    util, used, total = ([_number(c) for c in cells] + [None, None, None])[:3]
    apps = None if apps_text is None else [a for a in parse_compute_apps(apps_text) if a["pid"] != own_pid]
    busy = (apps is not None and bool(apps)) or (used is not None and used > memory_limit_mib) or \
        (util is not None and util > utilisation_limit)
    unknown = apps is None or used is None or util is None
    idle = False if busy else (None if unknown else True)

    def fmt(v, unit):
        return "n/a" if v is None else f"{int(v)}{unit}"
    detail = f"utilisation {fmt(util, ' %')}, memory {fmt(used, ' MiB')}"
    detail += f" of {fmt(total, ' MiB')}" if total is not None else ""
    if apps is None:
        detail += ", other compute processes: not readable"
    elif apps:
        listed = "; ".join(f"{a['pid']} {a['name'] or '?'} ({fmt(a['memory_mib'], ' MiB')})" for a in apps[:4])
        detail += f", other compute processes {len(apps)}: {listed}"
    else:
        detail += ", other compute processes 0"
    detail += f" ({rule})"  # the report shows the detail: the rule goes with the reading
    return {"idle": idle, "detail": detail, "rule": rule, "utilisation": util, "memory_used_mib": used,
            "memory_total_mib": total, "processes": apps}


def attest(device: str) -> dict:
    """Is the device idle before we take it? {"idle": bool | None, "detail": str, ...} for the report."""
    kind, index = parse_device(device)
    if kind == "cuda":
        try:
            gid = nvidia_smi_id(index)
        except ValueError as exc:
            return {"idle": None, "detail": str(exc)}
        gpu = run_tool(["nvidia-smi", "-i", gid, "--query-gpu=utilization.gpu,memory.used,memory.total",
                    "--format=csv,noheader,nounits"])
        apps = run_tool(["nvidia-smi", "-i", gid, "--query-compute-apps=pid,process_name,used_memory",
                     "--format=csv,noheader,nounits"]) if gpu is not None else None
        return cuda_attestation(gpu, apps, os.getpid())
    if kind == "npu":
        return npu_host.attest(index)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"idle": None, "detail": f"cpu: not attested (load average {load1:.2f})" if load1 is not None else "cpu"}
