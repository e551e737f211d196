"""cuda:N discovery and the idle attestation, read from a fake nvidia-smi on PATH (no GPU needed)."""
from __future__ import annotations

import os

import pytest

from workers import devices

GPUS = """\
0, GPU-8d6c1f5e-aaaa-bbbb-cccc-000000000000, NVIDIA H100 80GB HBM3, 81559
1, GPU-11f0e2d4-aaaa-bbbb-cccc-111111111111, NVIDIA H100 80GB HBM3, 81559
2, GPU-2b7d9c31-aaaa-bbbb-cccc-222222222222, NVIDIA H100 80GB HBM3, 81559
"""
# README, "GPUs": no other compute process, at most 1024 MiB used, utilisation at most 10 %
README_RULE = "idle = no other compute process, memory used <= 1024 MiB, utilisation <= 10 %"


def fake_nvidia_smi(folder, state: str = "0, 3, 81559", apps: str = "") -> "os.PathLike":
    """nvidia-smi answering the three queries the product makes; each call's arguments go to calls.log."""
    log = folder / "calls.log"
    script = folder / "nvidia-smi"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  *query-compute-apps*) printf '%s' '{apps}';;
  *utilization.gpu*) echo '{state}';;
  *query-gpu=index*) cat <<'EOF'
{GPUS}EOF
;;
  *) exit 9;;
esac
""")
    script.chmod(0o755)
    return log


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "ort_has_cuda", lambda: True)
    return tmp_path


def test_parse_gpu_rows_and_unreadable_cells():
    gpus = devices.parse_nvidia_smi_gpus(GPUS + "No devices were found\n")
    assert [g["index"] for g in gpus] == [0, 1, 2] and gpus[1]["uuid"].startswith("GPU-11f0")
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3" and gpus[0]["memory_mib"] == 81559
    assert devices.parse_nvidia_smi_gpus("0\n") == [{"index": 0}]
    apps = devices.parse_compute_apps("4242, python3, 1530\n77, /usr/bin/trainer, [N/A]\n")
    assert apps == [{"pid": 4242, "name": "python3", "memory_mib": 1530.0},
                    {"pid": 77, "name": "/usr/bin/trainer", "memory_mib": None}]
    assert devices.parse_compute_apps("No running processes found\n") == []


def test_every_listed_gpu_is_a_device(bin_dir):
    fake_nvidia_smi(bin_dir)
    assert devices.discover() == ["cuda:0", "cuda:1", "cuda:2"]


def test_no_runtime_that_can_use_them_means_no_gpu_devices(bin_dir, monkeypatch):
    fake_nvidia_smi(bin_dir)
    monkeypatch.setattr(devices, "ort_has_cuda", lambda: False)
    monkeypatch.setattr(devices, "torch_has_cuda", lambda: False)
    assert devices.discover() == ["cpu:0"]


@pytest.mark.parametrize("visible,found,smi_id", [
    ("2,0", ["cuda:0", "cuda:1"], "2"),
    ("GPU-11f0e2d4", ["cuda:0"], "GPU-11f0e2d4"),  # a UUID prefix, as CUDA accepts it
    ("1,7,0", ["cuda:0"], "1"),  # CUDA stops at the first card that does not exist
    ("", [], None),
])
def test_cuda_visible_devices_renumbers_and_attestation_asks_for_the_right_card(bin_dir, monkeypatch, visible,
                                                                                found, smi_id):
    log = fake_nvidia_smi(bin_dir)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert devices.cuda_devices() == found
    if smi_id is None:
        assert "not visible" in devices.attest("cuda:0")["detail"]
        return
    devices.attest("cuda:0")  # this process's cuda:0 is nvidia-smi's card smi_id
    assert f"-i {smi_id} --query-gpu=utilization.gpu" in log.read_text()


@pytest.mark.parametrize("state,apps,idle,words", [
    ("0, 3, 81559", "", True, ["utilisation 0 %", "memory 3 MiB of 81559 MiB", "other compute processes 0"]),
    ("0, 3, 81559", "4242, python3, 1530\n", False, ["other compute processes 1: 4242 python3 (1530 MiB)"]),
    ("0, 20480, 81559", "", False, ["memory 20480 MiB"]),  # memory held by a process nvidia-smi cannot see
    ("97, 3, 81559", "", False, ["utilisation 97 %"]),
    ("[N/A], 3, 81559", "", None, ["utilisation n/a"]),  # cannot be attested, and nothing says busy
    ("[N/A], 3, 81559", "9, x, 1\n", False, ["other compute processes 1"]),
])
def test_attestation_from_nvidia_smi(bin_dir, state, apps, idle, words):
    fake_nvidia_smi(bin_dir, state, apps)
    result = devices.attest("cuda:0")
    assert result["idle"] is idle, result
    for word in words:
        assert word in result["detail"]
    assert "\n" not in result["detail"] and result["rule"] == README_RULE and result["detail"].endswith(f"({README_RULE})")


def test_own_process_does_not_make_the_card_busy(bin_dir):
    fake_nvidia_smi(bin_dir, apps=f"{os.getpid()}, python3, 900\n")
    assert devices.attest("cuda:0")["idle"] is True


def test_without_nvidia_smi_the_card_is_not_attested(bin_dir):
    assert devices.attest("cuda:0") == {"idle": None, "detail": "nvidia-smi not available", "rule": README_RULE}
    assert devices.cuda_attestation("0, 3, 81559", None, 1)["idle"] is None  # processes not readable


def test_torch_cuda_build_is_read_from_metadata_without_importing_torch(monkeypatch):
    from importlib import metadata
    monkeypatch.setattr(metadata, "version", lambda name: "2.14.1+cpu")
    assert devices.torch_has_cuda() is False
    monkeypatch.setattr(metadata, "version", lambda name: "2.14.1+cu130")
    assert devices.torch_has_cuda() is True
