"""Sim devices that answer like a detector: deterministic per image id, AP strictly between 0 and 1."""
from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.generated_set import write_set
from orchestrator.jobs import new_job_id, submit_job, wait_job
from evaluation.coco_eval import evaluate
from tasks.params import JobParams
from tasks.shards import read_images
from tasks.state import JobState
from workers.backends import check_spec, create_backend
from workers.backends.detector_like import image_detections, seeded_rng
from workers.inference import run_shard

BACKEND = "sim:1ms,load=none,answers=detector"


def test_answers_option():
    assert create_backend(BACKEND).describe()["answers"] == "detector"
    assert create_backend("sim:1ms").describe()["answers"] == "groundtruth"
    with pytest.raises(ValueError, match=r"answers=groundtruth\|detector.*\(--backend\)$"):
        check_spec("sim:1ms,answers=perfect")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    ann, img = write_set(tmp_path_factory.mktemp("detector_set"), 96, seed=11)
    return ann, img, json.loads(ann.read_text())


def test_an_image_answer_has_every_kind_of_detection(generated):
    _, _, data = generated
    counts = []
    for im in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        boxes, scores, cats = image_detections(seeded_rng(im["id"]), im["width"], im["height"], anns)
        again = image_detections(seeded_rng(im["id"]), im["width"], im["height"], anns)
        assert all(np.array_equal(a, b) for a, b in zip((boxes, scores, cats), again))
        assert len(boxes) == len(scores) == len(cats) <= 100
        assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 2] <= im["width"]).all()
        assert (scores >= 0.05).all() and (scores <= 1.0).all()
        counts.append(len(boxes))
    assert 70 < np.mean(counts) < 95 and max(counts) <= 100


def shard_results(runner, ann, img, job_id, batch, items, tmp_path):
    """COCO results of one shard run through the sim, by image id (a JSON line each)."""
    params = JobParams(job_id=job_id, annotation=str(ann), image_dir=str(img), backend=BACKEND, batch=batch,
                       size_mode="static", static_size=640, store=str(tmp_path / "store"))
    runner.state.create(params, [items])
    out = run_shard(runner, create_backend(BACKEND, device="cpu:0"), params, 0, items)
    by_image: dict[int, list] = {}
    for r in out["results"]:
        by_image.setdefault(r["image_id"], []).append(json.dumps(r, sort_keys=True))
    return by_image, out["results"]


def test_answers_are_the_same_in_any_batch_shard_and_order(runner, generated, tmp_path):
    ann, img, _ = generated
    images = read_images(ann)
    whole, results = shard_results(runner, ann, img, "a", 8, images, tmp_path)
    odd, _ = shard_results(runner, ann, img, "b", 3, images[::-1][:40], tmp_path)
    alone, _ = shard_results(runner, ann, img, "c", 1, images[50:51], tmp_path)
    assert len(whole) >= 90 and sum(map(len, whole.values())) > 90 * 60
    assert odd and all(odd[i] == whole[i] for i in odd) and alone and all(alone[i] == whole[i] for i in alone)
    ap = evaluate(str(ann), results, "pycocotools")["stats"]["AP"]
    assert 0.0 < ap < 1.0


@pytest.mark.slow
def test_a_real_job_with_detector_answers_has_the_same_ap_below_one(redis_url, processes, tmp_path):
    ann, _ = write_set(tmp_path / "set", 120, seed=12)
    state = JobState.open(redis_url)
    workers = [processes.preprocess_pool(redis_url)] + [processes.device_worker(redis_url, d)
                                                        for d in ("cpu:0", "cpu:1")]
    for w in workers:
        processes.wait_ready(w)
    reports = []
    for batch, shard_size in ((8, 0), (3, 7)):
        params = JobParams(job_id=new_job_id(), annotation=str(ann), image_dir=str(ann.parent / "images"),
                           backend="sim:5ms,load=none,answers=detector", batch=batch, size_mode="static",
                           static_size=1216, warmup_batches=0, shard_size=shard_size)
        submit_job(state, params, read_images(ann), 2)
        reports.append(wait_job(state, params.job_id, timeout_s=120))
    for report in reports:
        assert report["status"] == "done" and report["coverage"]["ok"]
        assert 0.0 < report["ap"]["stats"]["AP"] < 1.0 and report["ap"]["detections"] > 120 * 60
    assert reports[0]["ap"]["stats"] == reports[1]["ap"]["stats"]  # other batches and shards, the same AP
