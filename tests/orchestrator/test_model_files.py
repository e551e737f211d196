"""`submit` opens the model file before it starts anything: a wrong one is one line, exit 2, and no process."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract_onnx import write_tiny_onnx
from orchestrator.__main__ import main
from orchestrator.model_files import check_model_file

torch = pytest.importorskip("torch")


def contract_graph(path: Path, input_dims: list, outputs: dict[str, tuple[int, list]]) -> Path:
    """An ONNX graph with input `input` and constant outputs {name: (onnx element type, dims)}."""
    import onnx
    from onnx import TensorProto, helper

    nodes, values = [], []
    for name, (dtype, dims) in outputs.items():
        size = 1
        for d in dims:
            size *= d
        nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(
            f"{name}_v", dtype, dims, [0] * size)))
        values.append(helper.make_tensor_value_info(name, dtype, dims))
    graph = helper.make_graph(nodes, "not_the_contract",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_dims)], values)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """This architecture's weights in mmdet's layout (random: only names, shapes and dtypes are checked)."""
    from model.config import MODEL
    from model.detector import Detector
    path = tmp_path_factory.mktemp("ckpt") / "dcn.pth"
    torch.save({"meta": {"mmdet_version": "2.8.0"}, "state_dict": Detector(MODEL).state_dict()}, path)
    return path


def bad_models(folder: Path, checkpoint: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the error line must say)."""
    import onnx
    import torchvision

    random_bytes = folder / "random.pth"
    random_bytes.write_bytes(os.urandom(1 << 16))
    other = folder / "resnet18.pth"
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, other)
    truncated = folder / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:checkpoint.stat().st_size // 2])
    I64, F32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    wrong_outputs = contract_graph(folder / "boxes_scores.onnx", ["B", 3, "H", "W"],
                                   {"boxes": (F32, [1, 100, 4]), "labels": (I64, [1, 100])})
    wrong_shape = contract_graph(folder / "dets_1000.onnx", ["B", 3, "H", "W"],
                                 {"dets": (F32, [1, 1000, 5]), "labels": (I64, [1, 1000])})
    return {
        "random bytes named .pth": (random_bytes, "not a readable PyTorch checkpoint"),
        "another architecture": (other, "not a Faster R-CNN R50-FPN-DCN checkpoint: missing key"),
        "truncated checkpoint": (truncated, "not a readable PyTorch checkpoint"),
        "ONNX with the wrong outputs": (wrong_outputs, "no output named `dets` (outputs: boxes, labels)"),
        "ONNX with 1000 detections": (wrong_shape, "`dets` is float [1,1000,5], expected float [B,100,5]"),
    }


def started_anything(runs: Path) -> list[str]:
    """What a cluster would leave: a worker's log or Redis' folder under the run root, or a live process there."""
    left = [str(p) for name in ("logs", "redis", "cluster.json") for p in runs.rglob(name)]
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(runs).encode() in (proc / "cmdline").read_bytes():
                left.append(f"pid {proc.name}")
        except OSError:
            continue
    return left


def test_the_checkpoint_and_the_onnx_file_that_keep_the_contract_pass(checkpoint, tiny_onnx):
    check_model_file("torch", str(checkpoint), "static", 1216)
    for mode in ("static", "mmdet"):
        check_model_file("onnxruntime", str(tiny_onnx), mode, 320)


def test_each_bad_model_file_is_one_line_and_exit_2_before_any_worker_starts(checkpoint, selftest_set, tmp_path,
                                                                            capsys):
    ann, img = selftest_set
    runs = tmp_path / "runs"
    lines = []
    for case, (path, says) in bad_models(tmp_path, checkpoint).items():
        code = main(["submit", "--annotations", str(ann), "--images", str(img), "--model", str(path),
                     "--devices", "cpu:0", "--run-dir", str(runs)])
        out = capsys.readouterr()
        err = out.err.strip()
        assert code == 2, (case, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and says in err, (case, err)
        assert err.endswith(f"({path})"), (case, err)
        assert out.out == "" and started_anything(runs) == [], case
        lines.append(f"{case}: {err}")
    print("\n" + "\n".join(lines))


def test_an_onnx_canvas_that_does_not_fit_the_job_is_named(tmp_path, capsys, selftest_set):
    import onnx
    ann, img = selftest_set
    outputs = {"dets": (onnx.TensorProto.FLOAT, [1, 100, 5]), "labels": (onnx.TensorProto.INT64, [1, 100])}
    fixed = contract_graph(tmp_path / "fixed512.onnx", ["B", 3, 512, 512], outputs)
    base = ["submit", "--annotations", str(ann), "--images", str(img), "--model", str(fixed), "--devices", "cpu:0",
            "--run-dir", str(tmp_path / "runs")]
    assert main(base + ["--size-mode", "mmdet"]) == 2
    assert "mmdet mode needs them dynamic (pth2onnx --size-mode mmdet)" in capsys.readouterr().err
    assert main(base + ["--static-size", "320"]) == 2
    assert "fixed at 512x512, the job's canvas is 320x320 (--static-size 512)" in capsys.readouterr().err
    check_model_file("onnxruntime", str(fixed), "static", 512)  # the canvas it was exported for


def test_every_model_file_of_a_sweep_is_opened(tmp_path, capsys, selftest_set):
    ann, img = selftest_set
    write_tiny_onnx(tmp_path / "tiny_bs1.onnx", fixed_batch=1)
    (tmp_path / "tiny_bs4.onnx").write_bytes(b"not protobuf at all")
    code = main(["submit", "--annotations", str(ann), "--images", str(img),
                 "--model", str(tmp_path / "tiny_bs{batch}.onnx"), "--batch", "1,4", "--devices", "cpu:0",
                 "--run-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ONNX Runtime cannot open the model: ")
    assert err.endswith(f"({tmp_path / 'tiny_bs4.onnx'})")
    assert started_anything(tmp_path / "runs") == []
