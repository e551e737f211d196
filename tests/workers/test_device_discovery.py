"""Device discovery (cpu, cuda via nvidia-smi + ONNX Runtime, npu via npu-smi) and idle attestation."""
from __future__ import annotations

import os
import stat

import pytest

from workers import devices

NPU_SMI = """\
+--------------------------------------------------------------------------------------------------------+
| npu-smi 23.0.rc2                                 Version: 23.0.rc2                                     |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 0       310P3                 | OK              | NA           44                0     / 0             |
| 0       0                     | 0000:3B:00.0    | 0            1782 / 21527                            |
+===============================+=================+======================================================+
| 1       310P3                 | OK              | NA           42                0     / 0             |
| 0       1                     | 0000:86:00.0    | 0            1779 / 21527                            |
+===============================+=================+======================================================+
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Chip                  | Process id      | Process name             | Process memory(MB)        |
+===============================+=================+======================================================+
| No running processes found in NPU 0                                                                    |
+===============================+=================+======================================================+
| No running processes found in NPU 1                                                                    |
+===============================+=================+======================================================+
"""


def fake_tool(folder, name, output):
    path = folder / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
    return tmp_path


def test_parse_npu_smi_gives_logical_device_ids():
    assert devices.parse_npu_smi_devices(NPU_SMI) == [0, 1]


def test_cpu_only_host(bin_dir):
    assert devices.discover() == ["cpu:0"]


def test_npus_from_npu_smi(bin_dir):
    fake_tool(bin_dir, "npu-smi", NPU_SMI)
    assert devices.discover() == ["npu:0", "npu:1"]
    assert devices.attest("npu:1")["idle"] is True


def test_gpus_from_nvidia_smi_when_a_runtime_can_use_them(bin_dir, monkeypatch):
    fake_tool(bin_dir, "nvidia-smi", "0\n1\n")
    import onnxruntime
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert devices.discover() == ["cuda:0", "cuda:1"]


@pytest.mark.parametrize("apps,idle", [("", True), ("4242", False)])
def test_cuda_attestation_reads_nvidia_smi(bin_dir, apps, idle):
    path = bin_dir / "nvidia-smi"
    path.write_text(f'#!/bin/sh\ncase "$*" in *compute-apps*) echo "{apps}";; *) echo "3, 512";; esac\n')
    path.chmod(0o755)
    result = devices.attest("cuda:0")
    assert result["idle"] is idle and "utilisation 3 %, memory 512 MiB" in result["detail"]


@pytest.mark.parametrize("bad", ["gpu0", "cuda", "npu:x", "tpu:0"])
def test_bad_device_names_the_flag(bad):
    with pytest.raises(ValueError, match=r"\(--device\)"):
        devices.parse_device(bad)
