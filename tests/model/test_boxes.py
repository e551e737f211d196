"""Box coder, mmcv-style NMS helpers, RoI levels and the fixed-size detection selection."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import nms

from model.anchors import AnchorGenerator, base_anchors
from model.boxes import (MMCV_NMS_SPLIT_THR, batched_nms_padded, clip_boxes, decode_deltas, gather_rows,
                         mmcv_batched_nms)
from model.config import MODEL
from model.roi_head import map_roi_levels, select_detections


def test_base_anchors_match_mmdet_values():
    a = base_anchors(4, (8.0,), (0.5, 1.0, 2.0))
    expected = torch.tensor([[-22.627417, -11.313708, 22.627417, 11.313708], [-16.0, -16.0, 16.0, 16.0],
                             [-11.313708, -22.627417, 11.313708, 22.627417]])
    assert torch.allclose(a, expected, atol=1e-5, rtol=0)


def test_grid_anchors_are_ordered_y_x_ratio_with_corner_centres():
    gen = AnchorGenerator((4, 8), (8.0,), (0.5, 1.0, 2.0))
    anchors = gen.grid_anchors(1, 2, 3)  # level stride 8, H=2, W=3
    assert anchors.shape == (2 * 3 * 3, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    row = (1 * 3 + 2) * 3 + 1  # y=1, x=2, ratio 1
    assert centres[row].tolist() == [16.0, 8.0]
    assert (anchors[row, 2:] - anchors[row, :2]).tolist() == [64.0, 64.0]


def test_decode_zero_deltas_gives_the_anchor_clipped_per_image():
    anchors = torch.tensor([[[-10.0, 5.0, 30.0, 45.0]]]).expand(2, 1, 4)
    clip = torch.tensor([[40.0, 20.0], [100.0, 100.0]])  # (h, w)
    boxes = decode_deltas(anchors, torch.zeros(2, 1, 4), (1, 1, 1, 1), MODEL.max_ratio, clip)
    assert boxes.shape == (2, 1, 1, 4)
    assert boxes[0, 0, 0].tolist() == [0.0, 5.0, 20.0, 40.0]
    assert boxes[1, 0, 0].tolist() == [0.0, 5.0, 30.0, 45.0]


def test_decode_clamps_the_log_size_and_applies_stds():
    anchors = torch.tensor([[[1000.0, 1000.0, 1010.0, 1020.0]]])
    deltas = torch.tensor([[[1.0, -1.0, 100.0, -100.0]]])
    clip = torch.tensor([[10000.0, 10000.0]])
    box = decode_deltas(anchors, deltas, (0.1, 0.1, 0.2, 0.2), MODEL.max_ratio, clip)[0, 0, 0]
    w, h = (box[2] - box[0]).item(), (box[3] - box[1]).item()
    assert w == pytest.approx(10 * math.exp(MODEL.max_ratio), rel=1e-5)  # 100*0.2 clamped to 4.135
    assert h == pytest.approx(20 * math.exp(-MODEL.max_ratio), abs=2e-4)  # float32 corners near 1000
    assert ((box[0] + box[2]) / 2).item() == pytest.approx(1005 + 10 * 0.1, rel=1e-6)


def test_decode_class_specific_deltas_shape():
    boxes = decode_deltas(torch.rand(3, 5, 4) * 50, torch.zeros(3, 5, 320), (0.1, 0.1, 0.2, 0.2),
                          MODEL.max_ratio, torch.full((3, 2), 64.0))
    assert boxes.shape == (3, 5, 80, 4)


def test_clip_boxes_uses_w_and_h_themselves():
    boxes = torch.tensor([[[-1.0, -2.0, 50.0, 70.0]]])
    assert clip_boxes(boxes, torch.tensor([[60.0, 40.0]]))[0, 0].tolist() == [0.0, 0.0, 40.0, 60.0]


def random_boxes(n, seed=0, size=100.0):
    """Integer corners: the class shift is then exact and the IoUs equal the unshifted ones."""
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(n, 2, generator=g) * size).floor()
    wh = (torch.rand(n, 2, generator=g) * size / 3).floor() + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)


def per_group_nms(boxes, scores, groups, iou):
    kept = torch.cat([(groups == g).nonzero().view(-1)[nms(boxes[groups == g], scores[groups == g], iou)]
                      for g in torch.unique(groups)])
    return kept[scores[kept].argsort(descending=True)]


def test_mmcv_batched_nms_never_suppresses_across_groups():
    boxes, scores = random_boxes(400)
    groups = torch.arange(400) % 5
    keep = mmcv_batched_nms(boxes, scores, groups, 0.5)
    assert torch.equal(keep, per_group_nms(boxes, scores, groups, 0.5))
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 2)
    assert mmcv_batched_nms(same, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert mmcv_batched_nms(same, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), 0.5).tolist() == [0]


def test_mmcv_batched_nms_above_the_split_threshold_loops_per_group():
    boxes, scores = random_boxes(MMCV_NMS_SPLIT_THR + 50, seed=1, size=1000.0)
    groups = torch.arange(boxes.shape[0]) % 80
    keep = mmcv_batched_nms(boxes, scores, groups, 0.5)
    expected = per_group_nms(boxes, scores, groups, 0.5)
    assert set(keep.tolist()) == set(expected.tolist())
    assert torch.equal(scores[keep], scores[expected])  # equal scores may come in either order


def test_batched_nms_padded_ignores_invalid_rows_and_pads():
    boxes, scores = random_boxes(50)
    boxes = torch.stack([boxes, boxes])
    scores = torch.stack([scores, scores])
    valid = torch.ones(2, 50, dtype=torch.bool)
    valid[1, scores[1].argmax()] = False  # the best box of image 1 is padding
    keep = batched_nms_padded(boxes, scores, torch.zeros(50, dtype=torch.int64), valid, 0.3, 60)
    assert keep.shape == (2, 60)
    n0, n1 = int((keep[0] >= 0).sum()), int((keep[1] >= 0).sum())
    assert (keep[0, n0:] == -1).all() and (keep[1, n1:] == -1).all()
    assert keep[0, 0] == scores[0].argmax() and scores[1].argmax() not in keep[1].tolist()
    rows = valid[1].nonzero().view(-1)
    assert keep[1, :n1].tolist() == rows[nms(boxes[1, rows], scores[1, rows], 0.3)].tolist()
    assert (batched_nms_padded(boxes, scores, torch.zeros(50, dtype=torch.int64), None, 0.3, 3) >= 0).all()


def test_gather_rows_fills_padding():
    values = torch.arange(12.0).view(1, 3, 4)
    out = gather_rows(values, torch.tensor([[2, -1]]))
    assert out.tolist() == [[[8.0, 9.0, 10.0, 11.0], [0.0, 0.0, 0.0, 0.0]]]
    assert gather_rows(torch.tensor([[5, 6]]), torch.tensor([[1, -1]]), fill=-1).tolist() == [[6, -1]]


@pytest.mark.parametrize("side,level", [(0.0, 0), (111.9, 0), (112.0, 1), (223.9, 1), (224.0, 2), (448.0, 3),
                                        (5000.0, 3)])
def test_roi_levels_follow_mmdet_mapping(side, level):
    rois = torch.tensor([[0.0, 10.0, 20.0, 10.0 + side, 20.0 + side]])
    assert map_roi_levels(rois, 56.0, 4).item() == level


def test_select_detections_threshold_padding_and_cap():
    num, classes = 300, 80
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1, num, 1, 2, generator=g) * 900
    boxes = torch.cat([xy, xy + 20 + torch.rand(1, num, 1, 2, generator=g) * 40], -1).expand(1, num, classes, 4)
    scores = torch.zeros(1, num, classes + 1)
    scores[0, :, 3] = torch.linspace(0.9, 0.06, num)  # class 3 candidates
    scores[0, 0, 7] = 0.05  # exactly the threshold: not a candidate (strict >)
    scores[0, 1, 80] = 0.99  # background never counts
    valid = torch.ones(1, num, dtype=torch.bool)
    valid[0, 2] = False  # a padding proposal with a high score never becomes a detection
    scores[0, 2, 5] = 0.95
    dets, labels = select_detections(boxes.contiguous(), scores, valid, 0.05, 0.5, 100)
    assert dets.shape == (1, 100, 5) and labels.shape == (1, 100)
    n = int((labels >= 0).sum())
    assert 0 < n <= 100 and set(labels[0, :n].tolist()) == {3}
    assert (dets[0, :n, 4] > 0.05).all() and (dets[0, :n, 4].diff() <= 0).all()
    assert (dets[0, n:] == 0).all() and (labels[0, n:] == -1).all()


def test_select_detections_with_no_candidate_is_all_padding():
    boxes = torch.rand(2, 10, 80, 4)
    dets, labels = select_detections(boxes, torch.full((2, 10, 81), 0.01), torch.ones(2, 10, dtype=torch.bool),
                                     0.05, 0.5, 100)
    assert (dets == 0).all() and (labels == -1).all()
