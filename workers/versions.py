"""What a device host runs: runtime versions (onnxruntime, torch, CANN) and the device's identity, for the manifest."""
from __future__ import annotations

import os
import platform
import re
import socket
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from workers.devices import _run, nvidia_smi_id, parse_device

PACKAGES = ("onnxruntime", "onnxruntime-gpu", "torch", "torchvision", "ais_bench", "celery", "numpy", "opencv-python")
ASCEND_HOME = Path(os.environ.get("ASCEND_HOME_PATH", "/usr/local/Ascend"))


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _key_value(path: Path, key: str) -> str | None:
    """`key=value` (or `key: value`) from a small install-info file; None when absent."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    m = re.search(rf"^\s*{re.escape(key)}\s*[=:]\s*(\S+)", text, re.MULTILINE | re.IGNORECASE)
    return m.group(1) if m else None


def cann_version() -> dict[str, str | None]:
    """The CANN toolkit and NPU driver versions from their install-info files (None off Ascend hosts)."""
    toolkit = None
    for info in sorted(ASCEND_HOME.glob("ascend-toolkit/latest/*/ascend_toolkit_install.info")):
        toolkit = _key_value(info, "version")
        if toolkit:
            break
    return {"toolkit": toolkit, "driver": _key_value(ASCEND_HOME / "driver" / "version.info", "Version")}


@lru_cache(maxsize=1)
def host_versions() -> dict:
    """Host, OS, Python, runtime packages and CANN: one JSON-friendly dict."""
    return {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "packages": {name: _installed(name) for name in PACKAGES}, "cann": cann_version()}


def device_identity(device: str) -> dict:
    """Which physical card `device` is (name, UUID or serial) where the vendor tool tells; else just the id."""
    kind, index = parse_device(device)
    out: dict = {"device": device}
    if kind == "cuda":
        try:
            gid = nvidia_smi_id(index)
        except ValueError:
            return out
        text = _run(["nvidia-smi", "-i", gid, "--query-gpu=name,uuid,driver_version", "--format=csv,noheader"])
        if text:
            name, uuid, driver = (x.strip() for x in (text.strip().split(",") + ["", ""])[:3])
            out.update(name=name, uuid=uuid, driver=driver)
    elif kind == "npu":
        text = _run(["npu-smi", "info", "-t", "board", "-i", str(index)])
        for field in ("Serial Number", "Chip Name", "Firmware Version"):
            m = re.search(rf"{field}\s*:\s*(.+)", text or "")
            if m:
                out[field.lower().replace(" ", "_")] = m.group(1).strip()
    return out
