"""Runs a vendor's device tool (nvidia-smi, npu-smi) and gives its output, or None when it is absent or fails."""
from __future__ import annotations

import shutil
import subprocess


def run_tool(cmd: list[str], timeout_s: float = 20.0) -> str | None:
    """stdout of `cmd` when it exits 0; None when the tool is not on PATH, hangs or fails (discovery goes on)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None
