"""A job on the generated set whose shard results are perfect answers: what the reducer tests start from."""
from __future__ import annotations

import json

from tasks.params import JobParams
from tasks.shards import read_images
from tasks.state import JobState

FENCE = "lease:h:cpu:0:fence"


def perfect_payload(annotation_path, shard_items: list[dict]) -> dict:
    """A shard result whose detections are the non-crowd ground truth of its images, score 1."""
    data = json.loads(open(annotation_path).read())
    ids = [im["id"] for im in shard_items]
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in data["annotations"] if a["image_id"] in ids and not a["iscrowd"]]
    return {"image_ids": ids, "unreadable": {}, "results": results}


def create_job(redis_url: str, selftest_set, job_id: str, shard_size: int) -> tuple[JobState, list[list[dict]]]:
    """The generated set as a groundtruth job cut into shards of `shard_size`, the fencing counter at 1."""
    ann, img = selftest_set
    images = read_images(ann)
    shards = [images[i:i + shard_size] for i in range(0, len(images), shard_size)]
    state = JobState.open(redis_url)
    state.create(JobParams(job_id=job_id, annotation=str(ann), image_dir=str(img), backend="groundtruth",
                           batch=shard_size), shards)
    state.r.set(FENCE, 1)
    return state, shards
