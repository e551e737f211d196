"""Device discovery (cpu, cuda via nvidia-smi + ONNX Runtime, npu via npu-smi) and idle attestation."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from workers import devices, npu_host, npu_smi, versions
from workers.versions import cann_version, device_identity

SAMPLES = Path(__file__).parent / "data" / "npu_smi"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def fake_tool(folder, name, output):
    path = folder / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin:/bin")
    return tmp_path


def test_300i_pro_one_chip_per_card():
    chips = npu_smi.parse_chips(sample("300i_pro.txt"))
    assert [(c.npu_id, c.chip_id, c.name, c.device) for c in chips] == [(0, 0, "310P3", 0), (1, 0, "310P3", 1)]
    assert npu_smi.parse_processes(sample("300i_pro.txt")) == []
    assert sorted(npu_smi.logical_ids(chips, None)) == [0, 1]


def test_300i_duo_two_chips_on_one_card():
    chips = npu_smi.parse_chips(sample("300i_duo.txt"))
    assert [(c.npu_id, c.chip_id, c.device, c.bus_id) for c in chips] == [(2, 0, 0, "0000:01:00.0"),
                                                                          (2, 1, 1, "0000:01:00.0")]


def test_duo_process_rows_are_keyed_by_card_and_chip_and_mapped_with_m():
    info, mapping = sample("300i_duo_busy.txt"), npu_smi.parse_chip_map(sample("300i_duo_busy_mapping.txt"))
    assert mapping == {(1, 0): 0, (1, 1): 1, (2, 0): 2, (2, 1): 3}  # the MCU rows have no logic id
    (proc,) = npu_smi.parse_processes(info)
    assert (proc.npu_id, proc.chip_id, proc.pid, proc.name, proc.memory_mb) == (1, 1, 2417, "python3.9", 6153)
    logical = npu_smi.logical_ids(npu_smi.parse_chips(info), mapping)
    assert {i: (c.npu_id, c.chip_id) for i, c in logical.items()} == {0: (1, 0), 1: (1, 1), 2: (2, 0), 3: (2, 1)}


def test_310_names_are_digits_and_the_map_decides_the_logical_ids():
    chips = npu_smi.parse_chips(sample("310.txt"))
    assert [(c.npu_id, c.chip_id, c.name, c.device) for c in chips] == [(6, i, "310", 3 + i) for i in range(4)]
    logical = npu_smi.logical_ids(chips, npu_smi.parse_chip_map(sample("310_mapping.txt")))
    assert sorted(logical) == [0, 1, 2, 3] and logical[0].chip_id == 0
    assert "DeformableOffsets" in npu_smi.unsupported_reason("310") and npu_smi.unsupported_reason("310P3") is None


def test_910b_rows_without_device_column_and_the_newer_process_table():
    info = sample("910b_busy.txt")
    chips = npu_smi.parse_chips(info)
    assert [(c.npu_id, c.chip_id, c.name, c.device) for c in chips] == [(0, 0, "910B4", None), (1, 0, "910B4", None)]
    (proc,) = npu_smi.parse_processes(info)
    assert (proc.npu_id, proc.chip_id, proc.pid, proc.memory_mb) == (0, 0, 632268, 30000)


def fake_npu_smi(folder: Path, info: str, mapping: str = "", board: str = "", chip: str = "") -> None:
    """An npu-smi that answers `info`, `info -m`, `info -t board -i N` and `... -c C` from the samples."""
    for name, text in (("info", info), ("map", mapping), ("board", board), ("chip", chip)):
        (folder / f"npu_{name}.txt").write_text(text)
        (folder / "npu_args.log").touch()
    path = folder / "npu-smi"
    path.write_text(f"""#!/bin/sh
echo "$*" >> {folder}/npu_args.log
case "$*" in
  "info") cat {folder}/npu_info.txt;;
  "info -m") cat {folder}/npu_map.txt;;
  *"-c "*) cat {folder}/npu_chip.txt;;
  *"board"*) cat {folder}/npu_board.txt;;
  *) exit 1;;
esac
""")
    path.chmod(0o755)


def test_cpu_only_host(bin_dir):
    assert devices.discover() == ["cpu:0"]


def test_npus_from_npu_smi(bin_dir):
    fake_npu_smi(bin_dir, sample("300i_pro.txt"))
    assert devices.discover() == ["npu:0", "npu:1"]
    assert devices.attest("npu:1")["idle"] is True


def test_a_busy_chip_marks_only_its_own_device_busy(bin_dir):
    fake_npu_smi(bin_dir, sample("300i_duo_busy.txt"), sample("300i_duo_busy_mapping.txt"))
    assert devices.discover() == ["npu:0", "npu:1", "npu:2", "npu:3"]
    busy, neighbour, other_card = devices.attest("npu:1"), devices.attest("npu:0"), devices.attest("npu:2")
    assert busy["idle"] is False and "2417 python3.9 (6153 MB)" in busy["detail"]
    assert neighbour["idle"] is True and "1 on other chips of this host (not counted)" in neighbour["detail"]
    assert other_card["idle"] is True and (other_card["npu_id"], other_card["chip_id"]) == (2, 0)
    assert "sees no /dev/davinci node" in busy["detail"]  # what this process could see is said


def test_plain_310_hosts_are_refused_in_one_line(bin_dir):
    fake_npu_smi(bin_dir, sample("310.txt"), sample("310_mapping.txt"))
    assert devices.discover() == ["cpu:0"]
    refused = devices.unusable_devices()
    assert sorted(refused) == ["npu:0", "npu:1", "npu:2", "npu:3"] and "310P" in refused["npu:0"]
    assert "DeformableOffsets" in npu_host.unsupported(2)


def test_identity_asks_for_the_card_and_the_chip_through_the_map(bin_dir):
    board = "        Serial Number                  : 033VNY10MC000283\n        Firmware Version               : 7.1.0.5.220\n"
    chip = "        Chip Name                      : 310P3\n        Chip Type                      : Ascend\n"
    fake_npu_smi(bin_dir, sample("300i_duo_busy.txt"), sample("300i_duo_busy_mapping.txt"), board, chip)
    out = device_identity("npu:3")
    assert (out["npu_id"], out["chip_id"], out["serial_number"], out["chip_name"]) == (2, 1, "033VNY10MC000283",
                                                                                         "310P3")
    calls = (bin_dir / "npu_args.log").read_text().splitlines()
    assert "info -t board -i 2" in calls and "info -t board -i 2 -c 1" in calls  # card 2, not the logical id 3


@pytest.mark.parametrize("home", ["root", "toolkit"])
def test_cann_versions_from_both_layouts(tmp_path, monkeypatch, home):
    root = tmp_path / "Ascend"
    info = root / "ascend-toolkit" / "latest" / "x86_64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir(parents=True)
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.0.0\n")
    (root / "driver").mkdir()
    (root / "driver" / "version.info").write_text("Version=24.1.rc2\n")
    # set_env.sh points ASCEND_HOME_PATH at .../ascend-toolkit/latest; others at the install root
    monkeypatch.setenv("ASCEND_HOME_PATH", str(root if home == "root" else root / "ascend-toolkit" / "latest"))
    assert cann_version() == {"toolkit": "8.0.0", "driver": "24.1.rc2"}


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


def test_no_process_table_is_not_taken_for_an_idle_chip(bin_dir):
    """npu-smi prints the 310P process table only on card and server boards: no table means not attested."""
    table = sample("300i_pro.txt")
    fake_npu_smi(bin_dir, table[:table.index("| NPU     Chip")])
    assert npu_smi.parse_processes(table[:table.index("| NPU     Chip")]) is None
    result = devices.attest("npu:1")
    assert result["idle"] is None and "printed no process table for card 1 chip 0" in result["detail"]


def test_this_process_in_a_container_is_known_by_its_container_pid(bin_dir):
    """In a container npu-smi shows host pids; the newer table's last column holds the container's own pid."""
    mine = sample("910b_busy.txt").replace("| NA                      |", f"| {os.getpid():<23} |")
    (row,) = npu_smi.parse_processes(mine)
    assert row.pid == 632268 and row.pid_in_container == os.getpid()
    fake_npu_smi(bin_dir, mine)
    assert devices.attest("npu:0")["idle"] is True
    fake_npu_smi(bin_dir, sample("910b_busy.txt"))
    assert devices.attest("npu:0")["idle"] is False


def test_cann_version_where_acl_reads_it_and_the_driver_the_install_info_names(tmp_path, monkeypatch):
    """CANN 8.1+ keeps its version in share/info/runtime/version.info (ACL's aclsysGetCANNVersion reads it there);
    /etc/ascend_install.info's Driver_Install_Path_Param says where the driver is."""
    home = tmp_path / "Ascend" / "ascend-toolkit" / "latest"
    (home / "share" / "info" / "runtime").mkdir(parents=True)
    (home / "share" / "info" / "runtime" / "version.info").write_text("Version=8.1.RC1\n")
    driver = tmp_path / "opt" / "npu" / "driver"
    driver.mkdir(parents=True)
    (driver / "version.info").write_text("Version=25.0.rc1\n")
    install_info = tmp_path / "ascend_install.info"
    install_info.write_text(f"UserName=HwHiAiUser\nDriver_Install_Path_Param={driver.parent}\n"
                            "Driver_Install_Type=full\n")
    monkeypatch.setattr(versions, "INSTALL_INFO", install_info)
    monkeypatch.setenv("ASCEND_HOME_PATH", str(home))
    assert cann_version() == {"toolkit": "8.1.RC1", "driver": "25.0.rc1"}
