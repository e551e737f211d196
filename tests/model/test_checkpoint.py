"""The loader takes mmdet's layouts and spellings, and refuses any other file in one line naming it."""
from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

import model_support
from model.checkpoint import CheckpointError, load_detector, read_state_dict
from model.config import COCO_CLASSES
from model.detector import Detector
from model.random_checkpoint import _initial_value, random_state_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory):
    return model_support.random_checkpoint(tmp_path_factory)


@pytest.fixture(scope="session")
def random_weights(random_checkpoint) -> "OrderedDict[str, torch.Tensor]":
    return read_state_dict(random_checkpoint)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_old_offset_spelling_loads_like_the_new_one(tmp_path_factory):
    new = model_support.oracle_checkpoint(tmp_path_factory, "new")
    old = model_support.oracle_checkpoint(tmp_path_factory, "old")
    old_keys = read_state_dict(old)
    assert "backbone.layer2.0.conv2_offset.weight" in old_keys
    assert not any(".conv2.conv_offset." in k for k in old_keys)
    assert_same_weights(load_detector(old), load_detector(new))


def test_oracle_checkpoint_loads_every_tensor(tmp_path_factory):
    path = model_support.oracle_checkpoint(tmp_path_factory, "new")
    stored = read_state_dict(path)
    loaded = load_detector(path).state_dict()
    weights = [k for k in stored if not k.endswith("num_batches_tracked")]
    assert len(stored) == 374 and len(weights) == 321
    assert all(torch.equal(loaded[k], stored[k]) for k in weights)


def test_random_checkpoint_has_the_mmdet_layout(tmp_path_factory, random_checkpoint):
    """Same keys, order and shapes as mmdet 2.8's state_dict (the oracle's file), meta with CLASSES."""
    oracle = read_state_dict(model_support.oracle_checkpoint(tmp_path_factory, "new"))
    ours = read_state_dict(random_checkpoint)
    assert list(ours) == list(oracle)
    for key, value in ours.items():
        if key.endswith("num_batches_tracked"):
            assert value.shape == () and value.dtype == torch.int64
        else:
            assert value.shape == oracle[key].shape and value.dtype == torch.float32, key
            assert torch.isfinite(value).all(), key
    meta = torch.load(random_checkpoint, map_location="cpu", weights_only=True)["meta"]
    assert tuple(meta["CLASSES"]) == COCO_CLASSES and meta["mmdet_version"] == "2.8.0"


def test_random_checkpoint_is_reproducible_from_its_seed(random_weights):
    again = random_state_dict(seed=0)
    assert list(again) == list(random_weights)
    assert all(torch.equal(again[k], random_weights[k]) for k in again)
    like = random_weights["backbone.conv1.weight"]
    assert torch.equal(_initial_value(0, "backbone.conv1.weight", like), like)  # drawn, not calibrated
    assert not torch.equal(_initial_value(1, "backbone.conv1.weight", like), like)


def test_bare_state_dict_without_bn_counters_loads(tmp_path, random_checkpoint, random_weights):
    bare = OrderedDict((k, v) for k, v in random_weights.items() if not k.endswith("num_batches_tracked"))
    path = tmp_path / "bare.pth"
    torch.save(bare, path)
    assert_same_weights(load_detector(path), load_detector(random_checkpoint))


def plain_resnet50_state_dict(_weights):
    import torchvision
    return torchvision.models.resnet50(weights=None).state_dict()


def renamed_key(weights):
    out = OrderedDict(weights)
    out["roi_head.bbox_head.fc_cls.weights"] = out.pop("roi_head.bbox_head.fc_cls.weight")
    return out


def reshaped_key(weights):  # a 90-class head
    out = OrderedDict(weights)
    out["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(91, 1024)
    return out


def without_dcn(weights):  # plain Faster R-CNN R50-FPN
    return OrderedDict((k, v) for k, v in weights.items() if ".conv_offset." not in k)


def with_nan(weights):
    out = OrderedDict(weights)
    out["neck.fpn_convs.0.conv.bias"] = torch.full((256,), float("nan"))
    return out


def with_extra_key(weights):
    out = OrderedDict(weights)
    out["roi_head.mask_head.conv_logits.weight"] = torch.zeros(80, 256, 1, 1)
    return out


class Arbitrary:
    """An object weights_only unpickling must not construct."""


@pytest.mark.parametrize("make,expected", [
    (plain_resnet50_state_dict, "missing key backbone.conv1.weight"),
    (renamed_key, "missing key roi_head.bbox_head.fc_cls.weight"),
    (reshaped_key, "roi_head.bbox_head.fc_cls.weight has shape [91, 1024], expected [81, 1024]"),
    (without_dcn, "missing key backbone.layer2.0.conv2.conv_offset.weight"),
    (with_nan, "neck.fpn_convs.0.conv.bias holds NaN"),
    (with_extra_key, "unexpected key roi_head.mask_head.conv_logits.weight"),
], ids=["plain-resnet50", "renamed-key", "reshaped-key", "no-dcn", "nan", "extra-key"])
def test_wrong_model_is_refused_naming_the_key(tmp_path, random_weights, make, expected):
    path = tmp_path / "wrong.pth"
    torch.save({"meta": {"mmdet_version": "2.8.0"}, "state_dict": make(random_weights)}, path)
    with pytest.raises(CheckpointError) as info:
        load_detector(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message


def truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])


def random_bytes(_src, dst):
    dst.write_bytes(np.random.default_rng(0).bytes(200_000))


def json_file(_src, dst):
    dst.write_text(json.dumps({"state_dict": {"backbone.conv1.weight": [1.0, 2.0]}}))


def pickled_object(_src, dst):
    torch.save({"meta": {"note": Arbitrary()}, "state_dict": {}}, dst)


def empty_file(_src, dst):
    dst.write_bytes(b"")


@pytest.mark.parametrize("make,expected", [
    (truncated, "not a readable PyTorch checkpoint"),
    (random_bytes, "not a readable PyTorch checkpoint"),
    (json_file, "not a readable PyTorch checkpoint"),
    (pickled_object, "not a readable PyTorch checkpoint"),
    (empty_file, "not a readable PyTorch checkpoint"),
], ids=["truncated", "random-bytes", "json", "pickled-object", "empty"])
def test_not_a_checkpoint_is_refused_in_one_line(tmp_path, random_checkpoint, make, expected):
    path = tmp_path / "bad.pth"
    make(random_checkpoint, path)
    with pytest.raises(CheckpointError) as info:
        load_detector(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and expected in message


def test_missing_file_and_non_tensor_entries_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such checkpoint file .*nope\.pth"):
        load_detector(tmp_path / "nope.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_detector(path)
    torch.save({"state_dict": {"backbone.conv1.weight": 3}}, path)
    with pytest.raises(CheckpointError, match="is not a tensor"):
        load_detector(path)


def test_detector_state_dict_keys_are_mmdet_keys():
    """No name table: the module tree spells the checkpoint's keys (374 with BN counters)."""
    keys = list(Detector().state_dict())
    assert len(keys) == 374
    assert keys[:2] == ["backbone.conv1.weight", "backbone.bn1.weight"]
    assert "backbone.layer4.2.conv2.conv_offset.bias" in keys
    assert "backbone.layer1.0.conv2.conv_offset.weight" not in keys  # layer1 has no DCN
    assert keys[-1] == "roi_head.bbox_head.shared_fcs.1.bias"
