"""Batching never changes an image's detections; padded proposals never become detections."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import model_support
from model.preprocess import clip_sizes, load_image, preprocess
from model_support import IMAGES, oracle_image

pytestmark = pytest.mark.slow

SIZE = 512  # static canvas: any images share one shape; small enough for 24 forwards on 2 cores


@pytest.fixture(scope="session")
def detector(tmp_path_factory):
    return model_support.random_detector(tmp_path_factory)


@pytest.fixture(scope="session")
def eight_images():
    """The five oracle photographs and three of them mirrored, on 512 x 512 canvases."""
    photos = [load_image(oracle_image(name)) for name in IMAGES]
    photos += [p[:, ::-1].copy() for p in photos[:3]]
    prepared = [preprocess(p, "static", SIZE) for p in photos]
    images = torch.from_numpy(np.stack([x for x, _ in prepared]))
    return images, torch.from_numpy(clip_sizes([m for _, m in prepared]))


def run(detector, images, clip, batch):
    dets, labels = [], []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch):
            d, lab = detector(images[start:start + batch], clip[start:start + batch])
            dets.append(d)
            labels.append(lab)
    return torch.cat(dets), torch.cat(labels)


def test_batch_1_4_8_give_the_same_detections(detector, eight_images):
    images, clip = eight_images
    dets1, labels1 = run(detector, images, clip, 1)
    counts = (labels1 >= 0).sum(1)
    assert (counts > 0).all(), f"the random checkpoint found nothing in some photo: {counts.tolist()}"
    for batch in (4, 8):
        dets, labels = run(detector, images, clip, batch)
        assert dets.shape == (8, 100, 5) and labels.shape == (8, 100)
        assert torch.equal(labels, labels1), f"batch {batch}"
        diff = (dets - dets1).abs().max().item()
        assert diff <= 1e-5, f"batch {batch}: max difference {diff}"


def test_padded_proposals_leave_the_detections_unchanged(detector, eight_images):
    """600 proposals as they are vs the same 600 padded to 1000 with zero boxes marked invalid."""
    images, clip = eight_images
    with torch.inference_mode():
        feats = detector.neck(detector.backbone(images[:1]))
        proposals, _, valid = detector.rpn_head(feats, clip[:1])
        assert valid.all()
        short, short_valid = proposals[:, :600], valid[:, :600]
        dets, labels = detector.roi_head(feats, short, short_valid, clip[:1])
        padded = torch.cat([short, torch.zeros(1, 400, 4)], dim=1)
        padded_valid = torch.cat([short_valid, torch.zeros(1, 400, dtype=torch.bool)], dim=1)
        dets_p, labels_p = detector.roi_head(feats, padded, padded_valid, clip[:1])
    assert (labels >= 0).any()
    assert torch.equal(labels, labels_p)
    assert (dets - dets_p).abs().max().item() <= 1e-5


def test_fewer_than_1000_proposals_are_padded_without_changing_detections(detector):
    """At 128 x 128 the RPN keeps fewer than 1000 proposals: zero rows marked invalid fill the batch,
    and each image's detections equal those of its own unpadded proposals."""
    photos = [load_image(oracle_image(name)) for name in IMAGES[:2]]
    prepared = [preprocess(p, "static", 128) for p in photos]
    images = torch.from_numpy(np.stack([x for x, _ in prepared]))
    clip = torch.from_numpy(clip_sizes([m for _, m in prepared]))
    with torch.inference_mode():
        feats = detector.neck(detector.backbone(images))
        proposals, scores, valid = detector.rpn_head(feats, clip)
        dets, labels = detector.roi_head(feats, proposals, valid, clip)
        counts = valid.sum(1).tolist()
        alone = [detector.roi_head([f[i:i + 1] for f in feats], proposals[i:i + 1, :n], valid[i:i + 1, :n],
                                   clip[i:i + 1]) for i, n in enumerate(counts)]
    assert proposals.shape == (2, 1000, 4) and max(counts) < 1000
    assert all(valid[i, :n].all() for i, n in enumerate(counts))
    assert (proposals[~valid] == 0).all() and (scores[~valid] == 0).all()
    assert (labels >= 0).any()
    for i in range(2):
        assert torch.equal(labels[i], alone[i][1][0])
        assert (dets[i] - alone[i][0][0]).abs().max().item() <= 1e-5
