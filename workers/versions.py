"""What a device host runs: runtime versions (onnxruntime, torch, CANN) and the device's identity, for the manifest."""
from __future__ import annotations

import os
import platform
import re
import socket
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from workers import npu_host
from workers.devices import nvidia_smi_id, parse_device
from workers.vendor_tools import run_tool

PACKAGES = ("onnxruntime", "onnxruntime-gpu", "torch", "torchvision", "ais_bench", "celery", "numpy", "opencv-python")
DEFAULT_ASCEND_HOME = Path("/usr/local/Ascend")
INSTALL_INFO = Path("/etc/ascend_install.info")  # names the driver's folder (Driver_Install_Path_Param)
# the toolkit's version below a toolkit folder (`.../latest`) or below the install root: share/info/runtime is where
# ACL itself reads it (hicann/runtime acl.cpp: $ASCEND_HOME_PATH/share/info/<package>/version.info), the
# `<arch>-linux` install info is the older toolkits' only record
TOOLKIT_INFO = ("share/info/runtime/version.info", "*-linux/ascend_toolkit_install.info",
                "ascend-toolkit/latest/share/info/runtime/version.info",
                "ascend-toolkit/latest/*-linux/ascend_toolkit_install.info")


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


def _ascend_roots() -> list[Path]:
    """Where CANN may be: ASCEND_HOME_PATH (set_env.sh points it at `.../ascend-toolkit/latest`; others set the
    install root), its parents, and the default install root."""
    roots = []
    home = os.environ.get("ASCEND_HOME_PATH")
    if home:
        roots += [Path(home), *Path(home).parents]
    roots.append(DEFAULT_ASCEND_HOME)
    return list(dict.fromkeys(roots))


def cann_version() -> dict[str, str | None]:
    """The CANN toolkit and NPU driver versions from their install-info files (None off Ascend hosts); the driver
    first under the folder /etc/ascend_install.info names, as ACL looks for it."""
    toolkit = driver = None
    for root in _ascend_roots():
        for pattern in TOOLKIT_INFO:
            for info in sorted(root.glob(pattern)):
                toolkit = toolkit or _key_value(info, "version")
    driver_home = _key_value(INSTALL_INFO, "Driver_Install_Path_Param")
    for root in ([Path(driver_home)] if driver_home else []) + _ascend_roots():
        driver = driver or _key_value(root / "driver" / "version.info", "Version")
    return {"toolkit": toolkit, "driver": driver}


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
        text = run_tool(["nvidia-smi", "-i", gid, "--query-gpu=name,uuid,driver_version", "--format=csv,noheader"])
        if text:
            name, uuid, driver = (x.strip() for x in (text.strip().split(",") + ["", ""])[:3])
            out.update(name=name, uuid=uuid, driver=driver)
    elif kind == "npu":
        out.update(npu_host.identity(index))
    return out
