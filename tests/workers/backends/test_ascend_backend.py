"""AscendBackend against the ais_bench test double (tests/doubles: no NPU here), built from ais_bench's real API.

The double's "new" release runs ais_bench's model-path checks in its constructor and names outputs as ATC
does (`<op>:<index>:<onnx name>`); its "old" release answers a failed execute with `[]`.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from model.preprocess import plan_geometry
from workers import npu_host
from workers.backends import BackendUnavailable, create_backend
from workers.backends.ascend_backend import AscendBackend, output_name, parse_device_id, pick_outputs, to_contract
from workers.backends.base import InferenceBatch

DOUBLES = Path(__file__).resolve().parents[2] / "doubles"


@pytest.fixture
def ais(monkeypatch, tmp_path):
    """The double's `ais_bench.infer.interface`, importable as ais_bench."""
    monkeypatch.syspath_prepend(str(DOUBLES))
    for name in [m for m in sys.modules if m == "ais_bench" or m.startswith("ais_bench.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv(npu_host.VISIBLE_ENV, raising=False)
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(npu_host, "DEV_DIR", tmp_path / "no_dev")  # no /dev/davinci node: npu:N is ACL id N
    interface = importlib.import_module("ais_bench.infer.interface")
    interface._Session.created = []
    return interface


def write_om(path: Path, inputs=(("input", [2, 3, 64, 64]),), outputs=(("dets", [2, 100, 5]), ("labels", [2, 100])),
             mode: int = 0o640) -> Path:
    """A stand-in om: the double reads its inputs and outputs from this JSON."""
    path.write_text(json.dumps({"inputs": [list(i) for i in inputs], "outputs": [list(o) for o in outputs]}))
    path.chmod(mode)
    return path


@pytest.fixture
def om_file(tmp_path):
    return write_om(tmp_path / "model_bs2.om")


def make_batch(n_images: int, n_rows: int, size: int = 64) -> InferenceBatch:
    rng = np.random.default_rng(0)
    metas = [plan_geometry(48, 64, "static", static_size=size) for _ in range(n_images)]
    images = rng.standard_normal((n_rows, 3, size, size)).astype(np.float32)
    clip = np.full((n_rows, 2), size, dtype=np.float32)
    return InferenceBatch(images=images, clip_hw=clip, metas=metas, image_ids=list(range(n_images)))


def graph_outputs(batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Our Ascend export's layout: 3 real rows per image (score from the image's first pixel), then padding."""
    dets = np.zeros((batch, 100, 5), np.float32)
    labels = np.zeros((batch, 100), np.float32)
    for b in range(batch):
        dets[b, :3] = [[1, 2, 30, 40, 0.9], [5, 5, 20, 20, 0.5], [0, 0, 10, 10, 0.06]]
        dets[b, 0, 0] = b  # lets a test see which image a row came from
        labels[b, :3] = [3, 79, 0]
    return dets, labels


def by_name(feeds, outputs):
    """Answer every declared output by its ONNX name, in the om's order."""
    dets, labels = graph_outputs(feeds[0].shape[0])
    return [{"dets": dets, "boxes": dets, "labels": labels}.get(n, dets) for n, _ in outputs]


def test_created_by_the_backend_factory(om_file):
    backend = create_backend("ascend", model=str(om_file), device="npu:2")
    assert isinstance(backend, AscendBackend) and backend.device_index == 2 and backend.session is None


def test_parse_device_id():
    assert parse_device_id("npu:3") == 3 and parse_device_id(2) == 2
    with pytest.raises(ValueError, match="npu:N"):
        parse_device_id("cuda:0")


def test_to_contract_recipe_layout_maps_padding():
    # The recipe's om: boxes [100, 5] and labels [100] for one image; padding rows are zeros with class 0.
    boxes = np.zeros((100, 5), np.float32)
    boxes[:2] = [[1, 1, 9, 9, 0.8], [2, 2, 8, 8, 0.05]]  # 0.05 itself is not > 0.05: mmdet drops it
    labels = np.zeros(100, np.int64)
    labels[:2] = [7, 7]
    dets, labs = to_contract(boxes, labels, 1)
    assert dets.shape == (1, 100, 5) and labs.shape == (1, 100) and labs.dtype == np.int64
    assert labs[0, 0] == 7 and np.array_equal(dets[0, 0], boxes[0])
    assert (labs[0, 1:] == -1).all() and (dets[0, 1:] == 0).all()


def test_load_infer_close_with_atc_output_names_labels_first(ais, tmp_path, monkeypatch):
    om = write_om(tmp_path / "model_bs2.om", outputs=(("labels", [2, 100]), ("dets", [2, 100, 5])))
    monkeypatch.setattr(ais._Session, "respond", staticmethod(by_name))
    backend = AscendBackend(om, device="npu:1")
    backend.load()
    session = ais._Session.created[0]
    assert (session.device_id, session.model_path, backend.fixed_batch) == (1, str(om), 2)
    assert backend.output_names == ["PartitionedCall_labels_0:0:labels", "PartitionedCall_dets_1:1:dets"]
    batch = make_batch(2, 2)
    dets, labels = backend.infer(batch)
    assert dets.shape == (2, 100, 5) and dets.dtype == np.float32 and labels.dtype == np.int64
    assert labels[:, :3].tolist() == [[3, 79, 0]] * 2 and (labels[:, 3:] == -1).all()
    assert dets[1, 0, 0] == 1 and (dets[:, 3:] == 0).all()
    assert len(session.feeds) == 1 and len(session.feeds[0]) == 1  # no clip_hw input in the om: not fed
    assert np.array_equal(session.feeds[0][0], batch.images)
    assert backend.describe()["device"] == "npu:1" and backend.describe()["acl_device_id"] == 1
    backend.close()
    assert session.freed and backend.session is None
    assert len(ais._Session.created) == 1  # one session per worker process


def test_short_and_long_batches_are_padded_and_split(ais, om_file, monkeypatch):
    monkeypatch.setattr(ais._Session, "respond", staticmethod(by_name))
    backend = AscendBackend(om_file)
    backend.load()
    session = ais._Session.created[0]
    dets, labels = backend.infer(make_batch(1, 1))  # short: one empty canvas added, its rows dropped
    assert dets.shape == (1, 100, 5) and session.feeds[-1][0].shape[0] == 2
    assert not session.feeds[-1][0][1].any()
    dets, labels = backend.infer(make_batch(3, 3))  # longer than the om's batch: two device calls
    assert dets.shape == (3, 100, 5) and len(session.feeds) == 3
    assert dets[2, 0, 0] == 0  # third image is row 0 of the second call


def test_recipe_om_outputs_and_clip_input(ais, tmp_path, monkeypatch):
    def respond(feeds, outputs):  # batch-1 om with a clip input, outputs named as the recipe's export
        boxes = np.zeros((100, 5), np.float32)
        boxes[0] = [3, 4, 50, 60, 0.7]
        labels = np.zeros(100, np.int64)
        labels[0] = 15
        return [boxes, labels]

    om = write_om(tmp_path / "recipe_bs1.om", inputs=(("input", [1, 3, 64, 64]), ("clip_hw", [1, 2])),
                  outputs=(("boxes", [100, 5]), ("labels", [100])))
    monkeypatch.setattr(ais._Session, "respond", staticmethod(respond))
    backend = AscendBackend(om)
    backend.load()
    dets, labels = backend.infer(make_batch(1, 1))
    assert labels[0, 0] == 15 and (labels[0, 1:] == -1).all()
    fed = ais._Session.created[0].feeds[0]
    assert len(fed) == 2 and fed[1].tolist() == [[64.0, 64.0]]


def test_outputs_without_our_names_are_told_apart_by_size_or_refused():
    dets, labels = graph_outputs(2)
    got = pick_outputs(["Concat_9:0:out1", "Cast_3:0:out0"], [labels, dets], 2, "m.om")
    assert got[0] is dets and got[1] is labels
    with pytest.raises(ValueError, match=r"cannot tell dets from labels .*\(m\.om\)"):
        pick_outputs(["a:0:x", "b:0:y"], [labels, labels], 2, "m.om")
    assert output_name("PartitionedCall_dets_1:1:dets") == "dets" and output_name("dets") == "dets"
    assert output_name("Gather_7:1:onnx::Cast_12") == "onnx::Cast_12"  # torch's unnamed outputs hold `::`
    assert output_name("output_0_Concat_1262_0") == "output_0_Concat_1262_0"  # an om built without top names


def test_a_failed_execute_of_the_old_release_is_one_line(ais, om_file, monkeypatch):
    monkeypatch.setattr(ais, "InferSession", ais.OldInferSession)
    monkeypatch.setenv("AIS_DOUBLE_FAIL_EXECUTE", "1")
    backend = AscendBackend(om_file)
    backend.load()
    with pytest.raises(RuntimeError, match=r"ais_bench returned 0 outputs where the om has 2: the execute failed"):
        backend.infer(make_batch(2, 2))
    session = ais._Session.created[0]
    backend.close()
    assert session.freed  # the old release frees through finalize


@pytest.mark.parametrize("problem", ["foreign owner", "group writable", "symlink", "odd name", "no .om suffix"])
def test_an_om_that_ais_bench_refuses_is_refused_first_in_one_line_with_the_fix(ais, tmp_path, problem):
    om = write_om(tmp_path / "model_bs2.om")
    fix = {"foreign owner": "MODELS_GID", "group writable": "chmod go-w", "symlink": "give the file itself",
           "odd name": "rename it", "no .om suffix": "does not end in .om"}[problem]
    if problem == "foreign owner":
        os.chown(om, 4321, 4321)
    elif problem == "group writable":
        om.chmod(0o664)
    elif problem == "symlink":
        link = tmp_path / "linked.om"
        link.symlink_to(om)
        om = link
    elif problem == "odd name":
        om = om.rename(tmp_path / "model (bs 2).om")
    else:
        om = om.rename(tmp_path / "model_bs2.bin")
    with pytest.raises(ValueError):  # the double refuses the file as ais_bench would
        ais.NewInferSession(device_id=0, model_path=str(om))
    with pytest.raises(ValueError) as refused:
        AscendBackend(om).load()
    message = str(refused.value)
    assert message.startswith("ais_bench refuses this om: ") and fix in message and message.endswith(f"({om})")
    assert "\n" not in message and ais._Session.created == []  # refused before any session


def test_missing_runtime_and_wrong_input_size(ais, om_file, monkeypatch):
    backend = AscendBackend(om_file)
    backend.load()
    with pytest.raises(ValueError, match="does not fit the om input"):
        backend.infer(make_batch(2, 2, size=32))
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", None)  # import now fails
    with pytest.raises(BackendUnavailable, match="aclruntime"):
        AscendBackend(om_file).load()


def test_acl_device_id_counts_only_what_this_process_sees(tmp_path, monkeypatch):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("davinci3", "davinci5", "davinci_manager", "devmm_svm"):
        (dev / name).touch()
    monkeypatch.delenv(npu_host.VISIBLE_ENV, raising=False)
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)
    assert npu_host.acl_device_id(3, dev) == 0 and npu_host.acl_device_id(5, dev) == 1
    with pytest.raises(ValueError, match=r"npu:4 is not visible to this process \(it sees npu:3, npu:5\)"):
        npu_host.acl_device_id(4, dev)
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "1")
    assert npu_host.acl_device_id(5, dev) == 0
    with pytest.raises(ValueError, match="ASCEND_RT_VISIBLE_DEVICES=1 hides"):
        npu_host.acl_device_id(3, dev)
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES")
    monkeypatch.setenv(npu_host.VISIBLE_ENV, "7")  # said explicitly: the nodes are not consulted
    assert npu_host.acl_device_id(7, dev) == 0
    monkeypatch.delenv(npu_host.VISIBLE_ENV)
    assert npu_host.acl_device_id(2, tmp_path / "no_such_dev") == 2  # nothing known: the host number


def test_the_backend_opens_the_acl_id_of_its_device(ais, om_file, monkeypatch):
    monkeypatch.setenv(npu_host.VISIBLE_ENV, "3")  # a container given /dev/davinci3 alone
    backend = AscendBackend(om_file, device="npu:3")
    backend.load()
    assert ais._Session.created[0].device_id == 0
    assert backend.describe()["device"] == "npu:3" and backend.describe()["acl_device_id"] == 0
