"""AscendBackend with a test double in place of ais_bench's InferSession (no NPU here).

The double records how it was created and fed, and answers with outputs laid out as an Ascend om
answers: our export's `dets`/`labels`, or the recipe's `boxes`/`labels` without a batch dimension
and with zero padding rows of class 0.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest

from model.preprocess import plan_geometry
from workers.backends import BackendUnavailable, create_backend
from workers.backends.ascend_backend import AscendBackend, parse_device_id, to_contract
from workers.backends.base import InferenceBatch


@dataclass
class TensorDescTestDouble:
    name: str
    shape: list


class InferSessionTestDouble:
    """Stands in for ais_bench.infer.interface.InferSession; `respond(feeds)` gives the outputs."""

    created: list = []

    def __init__(self, device_id, model_path, respond, input_names, input_shape, output_names):
        self.device_id, self.model_path = device_id, model_path
        self.respond, self.feeds, self.freed = respond, [], False
        self._inputs = [TensorDescTestDouble(n, input_shape if i == 0 else [input_shape[0], 2])
                        for i, n in enumerate(input_names)]
        self._outputs = [TensorDescTestDouble(n, []) for n in output_names]
        InferSessionTestDouble.created.append(self)

    def get_inputs(self):
        return self._inputs

    def get_outputs(self):
        return self._outputs

    def infer(self, feeds, mode="static"):
        assert mode == "static"
        self.feeds.append([f.copy() for f in feeds])
        return self.respond(feeds)

    def free_resource(self):
        self.freed = True


def install_test_double(monkeypatch, respond, input_names=("input",), input_shape=(2, 3, 64, 64),
                        output_names=("dets", "labels")):
    """Make `from ais_bench.infer.interface import InferSession` return the test double."""
    InferSessionTestDouble.created = []

    def factory(device_id, model_path):
        return InferSessionTestDouble(device_id, model_path, respond, list(input_names), list(input_shape),
                                      list(output_names))

    interface = types.ModuleType("ais_bench.infer.interface")
    interface.InferSession = factory
    monkeypatch.setitem(sys.modules, "ais_bench", types.ModuleType("ais_bench"))
    monkeypatch.setitem(sys.modules, "ais_bench.infer", types.ModuleType("ais_bench.infer"))
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", interface)


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


@pytest.fixture
def om_file(tmp_path):
    path = tmp_path / "model_bs2.om"
    path.write_bytes(b"om")
    return path


def test_created_by_the_backend_factory(om_file):
    backend = create_backend("ascend", model=str(om_file), device="npu:2")
    assert isinstance(backend, AscendBackend) and backend.device_id == 2 and backend.session is None


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


def test_load_infer_close_through_infer_session(monkeypatch, om_file):
    install_test_double(monkeypatch, lambda feeds: list(graph_outputs(feeds[0].shape[0])))
    backend = AscendBackend(om_file, device="npu:1")
    backend.load()
    session = InferSessionTestDouble.created[0]
    assert (session.device_id, session.model_path, backend.fixed_batch) == (1, str(om_file), 2)
    batch = make_batch(2, 2)
    dets, labels = backend.infer(batch)
    assert dets.shape == (2, 100, 5) and dets.dtype == np.float32 and labels.dtype == np.int64
    assert labels[:, :3].tolist() == [[3, 79, 0]] * 2 and (labels[:, 3:] == -1).all()
    assert dets[1, 0, 0] == 1 and (dets[:, 3:] == 0).all()
    assert len(session.feeds) == 1 and len(session.feeds[0]) == 1  # no clip_hw input in the om: not fed
    assert np.array_equal(session.feeds[0][0], batch.images)
    assert backend.describe()["device"] == "npu:1"
    backend.close()
    assert session.freed and backend.session is None
    assert len(InferSessionTestDouble.created) == 1  # one session per worker process


def test_short_and_long_batches_are_padded_and_split(monkeypatch, om_file):
    install_test_double(monkeypatch, lambda feeds: list(graph_outputs(feeds[0].shape[0])))
    backend = AscendBackend(om_file)
    backend.load()
    session = InferSessionTestDouble.created[0]
    dets, labels = backend.infer(make_batch(1, 1))  # short: one empty canvas added, its rows dropped
    assert dets.shape == (1, 100, 5) and session.feeds[-1][0].shape[0] == 2
    assert not session.feeds[-1][0][1].any()
    dets, labels = backend.infer(make_batch(3, 3))  # longer than the om's batch: two device calls
    assert dets.shape == (3, 100, 5) and len(session.feeds) == 3
    assert dets[2, 0, 0] == 0  # third image is row 0 of the second call


def test_recipe_om_outputs_and_clip_input(monkeypatch, om_file):
    def respond(feeds):  # batch-1 om with a clip input, outputs named as the recipe's export
        boxes = np.zeros((100, 5), np.float32)
        boxes[0] = [3, 4, 50, 60, 0.7]
        labels = np.zeros(100, np.int64)
        labels[0] = 15
        return [boxes, labels]

    install_test_double(monkeypatch, respond, input_names=("input", "clip_hw"), input_shape=(1, 3, 64, 64),
                        output_names=("boxes", "labels"))
    backend = AscendBackend(om_file)
    backend.load()
    dets, labels = backend.infer(make_batch(1, 1))
    assert labels[0, 0] == 15 and (labels[0, 1:] == -1).all()
    fed = InferSessionTestDouble.created[0].feeds[0]
    assert len(fed) == 2 and fed[1].tolist() == [[64.0, 64.0]]


def test_wrong_input_size_and_missing_runtime(monkeypatch, om_file):
    install_test_double(monkeypatch, lambda feeds: list(graph_outputs(2)))
    backend = AscendBackend(om_file)
    backend.load()
    with pytest.raises(ValueError, match="does not fit the om input"):
        backend.infer(make_batch(2, 2, size=32))
    monkeypatch.setitem(sys.modules, "ais_bench.infer.interface", None)  # import now fails
    with pytest.raises(BackendUnavailable, match="aclruntime"):
        AscendBackend(om_file).load()
