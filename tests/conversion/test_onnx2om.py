"""onnx2om: the atc command line it builds, npu-smi parsing, and what it says when CANN is missing."""
from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from conversion import onnx2om  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

NPU_SMI_310P = """\
+--------------------------------------------------------------------------------------------------------+
| npu-smi 22.0.0                   Version: 22.0.2                                                       |
+-------------------+-----------------+------------------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page)             |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                                    |
+===================+=================+==================================================================+
| 0       310P3     | OK              | 16.2         42                0    / 0                          |
| 0       0         | 0000:86:00.0    | 0            994  / 21534                                        |
+===================+=================+==================================================================+
| 1       310P3     | OK              | 15.1         40                0    / 0                          |
| 0       1         | 0000:87:00.0    | 0            990  / 21534                                        |
+===================+=================+==================================================================+
+-------------------+-----------------+------------------------------------------------------------------+
| NPU     Chip      | Process id      | Process name             | Process memory(MB)                    |
+===================+=================+==================================================================+
| No running processes found in NPU 0                                                                    |
+===================+=================+==================================================================+
"""


NPU_SMI_310 = (REPO / "tests" / "workers" / "data" / "npu_smi" / "310.txt").read_text()


def write_onnx(path: Path, batch, size=64, op="Identity", extra_input: bool = False) -> Path:
    """A tiny graph with input `input` [batch, 3, size, size] whose only node is `op`."""
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("clip_hw", TensorProto.FLOAT, [batch, 2]))
    node = helper.make_node(op, ["input"], ["out"])
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph), str(path))
    return path


def write_script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def run_cli(*args: str, path_dirs: list[Path] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Only the fake tools and the interpreter's own folder: no real atc / npu-smi can leak in.
    env["PATH"] = os.pathsep.join([str(p) for p in path_dirs] + [str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    return subprocess.run([sys.executable, "-m", "conversion", "onnx2om", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO)


def test_build_atc_command_is_the_recipes():
    cmd = onnx2om.build_atc_command("m.onnx", "out_bs4", "Ascend310P3", 4, (1216, 1216))
    assert cmd == ["atc", "--framework=5", "--model=m.onnx", "--output=out_bs4", "--input_format=NCHW",
                   "--input_shape=input:4,3,1216,1216", "--log=debug", "--soc_version=Ascend310P3"]


def test_build_atc_command_extra_input_and_precision():
    cmd = onnx2om.build_atc_command("m.onnx", "o", "Ascend310P3", 2, (512, 512), log="error",
                                    extra_inputs={"clip_hw": [2, 2]}, precision_mode="allow_fp32_to_fp16")
    assert "--input_shape=input:2,3,512,512;clip_hw:2,2" in cmd
    assert cmd[-1] == "--precision_mode=allow_fp32_to_fp16" and "--log=error" in cmd


def test_soc_names_read_the_chip_names_only():
    assert onnx2om.soc_names(NPU_SMI_310P) == ["310P3", "310P3"]
    assert onnx2om.soc_names(NPU_SMI_310) == ["310"] * 4  # a name of digits is still a name
    assert onnx2om.soc_names("no table here") == []


def test_a_plain_310_host_and_a_float32_precision_mode_are_refused(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", batch=1)
    bin_dir = write_script(tmp_path / "bin", "npu-smi", f"cat <<'EOF'\n{NPU_SMI_310}EOF\n").parent
    proc = run_cli("--onnx", str(model), "--output", "o", "--dry-run", path_dirs=[bin_dir])
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: this host's NPUs are 310: Ascend 310 has no DeformableOffsets kernel")
    proc = run_cli("--onnx", str(model), "--output", "o", "--soc", "Ascend310P3", "--precision-mode",
                   "must_keep_origin_dtype", "--dry-run")
    assert proc.returncode == 2 and "BatchMultiClassNMS kernel takes float16 only" in proc.stderr
    assert proc.stderr.strip().endswith("(--precision-mode)")


def test_dry_run_prints_command_with_soc_from_npu_smi(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", batch=8, size=1216, op="DeformableConv2D")
    bin_dir = write_script(tmp_path / "bin", "npu-smi", f"cat <<'EOF'\n{NPU_SMI_310P}EOF\n").parent
    proc = run_cli("--onnx", str(model), "--output", str(tmp_path / "m_bs8.om"), "--dry-run", path_dirs=[bin_dir])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"atc --framework=5 --model={model} --output={tmp_path / 'm_bs8'} "
                                   "--input_format=NCHW --input_shape=input:8,3,1216,1216 --log=debug "
                                   "--soc_version=Ascend310P3")


def test_batch_must_match_a_fixed_graph(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", batch=1)
    proc = run_cli("--onnx", str(model), "--output", "o", "--soc", "Ascend310P3", "--batch", "4", "--dry-run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: the graph's batch is fixed at 1, not 4: "
                                                "export it again with --batch 4 (--batch)"]


def test_dynamic_batch_takes_batch_flag_and_fixes_extra_inputs(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", batch="B", size=512, extra_input=True)
    proc = run_cli("--onnx", str(model), "--output", "o", "--soc", "Ascend310P3", "--batch", "4", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "--input_shape=input:4,3,512,512;clip_hw:4,2" in shlex.split(proc.stdout)
    proc = run_cli("--onnx", str(model), "--output", "o", "--soc", "Ascend310P3", "--dry-run")
    assert proc.returncode == 2 and "pass --batch N (--batch)" in proc.stderr


def test_onnxruntime_export_is_refused(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", batch=1, op="DeformConv")
    proc = run_cli("--onnx", str(model), "--output", "o", "--soc", "Ascend310P3", "--dry-run")
    assert proc.returncode == 2 and "pth2onnx --target ascend" in proc.stderr


def test_missing_npu_smi_and_atc_are_named(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", batch=1)
    proc = run_cli("--onnx", str(model), "--output", "o", "--dry-run")
    assert proc.returncode == 2 and "npu-smi is not on PATH" in proc.stderr and "(--soc)" in proc.stderr
    proc = run_cli("--onnx", str(model), "--output", "o", "--soc", "Ascend310P3")
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith("error: atc is not on PATH") and line.endswith("(atc)") and "CANN" in line


def fake_atc(folder: Path, log: Path, suffix: str | None) -> Path:
    """An atc that records its arguments and, like the real one, writes `<--output><suffix>` (None: writes nothing)."""
    write = f'out="${{out#--output=}}"; echo om > "${{out}}{suffix}"\n' if suffix is not None else ""
    body = f'printf "%s\\n" "$@" > {log}\nout=$(grep -- "^--output=" {log})\n{write}'
    return write_script(folder, "atc", body).parent


@pytest.mark.parametrize("suffix", [".om", "_linux_x86_64.om"])
def test_runs_atc_and_prints_the_om_it_wrote(tmp_path, suffix):
    model = write_onnx(tmp_path / "m.onnx", batch=1)
    log = tmp_path / "atc_args.txt"
    bin_dir = fake_atc(tmp_path / "bin", log, suffix)
    proc = run_cli("--onnx", str(model), "--output", str(tmp_path / "m"), "--soc", "Ascend310P3", "--log", "error",
                   path_dirs=[bin_dir])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{tmp_path / 'm'}{suffix}" and Path(proc.stdout.strip()).is_file()
    assert log.read_text().splitlines() == [
        "--framework=5", f"--model={model}", f"--output={tmp_path / 'm'}", "--input_format=NCHW",
        "--input_shape=input:1,3,64,64", "--log=error", "--soc_version=Ascend310P3"]


def test_atc_that_writes_no_om_is_one_line(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", batch=1)
    bin_dir = fake_atc(tmp_path / "bin", tmp_path / "atc_args.txt", None)
    proc = run_cli("--onnx", str(model), "--output", str(tmp_path / "m"), "--soc", "Ascend310P3", path_dirs=[bin_dir])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: atc exited 0 but wrote no {tmp_path / 'm'}.om (--output)"


def test_atc_failure_is_one_line(tmp_path):
    model = write_onnx(tmp_path / "m.onnx", batch=1)
    bin_dir = write_script(tmp_path / "bin", "atc", "echo 'E10001: bad op' >&2\nexit 3\n").parent
    proc = run_cli("--onnx", str(model), "--output", "o", "--soc", "Ascend310P3", path_dirs=[bin_dir])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: atc failed with exit code 3")
