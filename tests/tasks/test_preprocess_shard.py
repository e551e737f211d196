"""The preprocessing task's body: fills the tensor store ahead of the devices."""
from __future__ import annotations

import shutil

from tasks.params import JobParams
from tasks.preprocessing import preprocess_shard
from tasks.shards import read_images
from tasks.state import JobState


def test_fills_the_store_counts_unreadable_and_honours_a_local_store(redis_url, selftest_set, tmp_path):
    ann, img = selftest_set
    images = tmp_path / "images"
    shutil.copytree(img, images)
    (images / "000000000139.jpg").unlink()
    state = JobState.open(redis_url)
    state.create(JobParams(job_id="p", annotation=str(ann), image_dir=str(images), backend="groundtruth",
                           store=str(tmp_path / "job_store")), [read_images(ann)])
    first = preprocess_shard(state, "p", 0)
    assert (first["images"], first["misses"], first["unreadable"]) == (10, 9, 1)
    assert len(list((tmp_path / "job_store").rglob("*.img"))) == 9
    assert preprocess_shard(state, "p", 0)["hits"] == 9  # a second pass only reads headers
    local = preprocess_shard(state, "p", 0, store_root=str(tmp_path / "local"))
    assert local["misses"] == 9 and len(list((tmp_path / "local").rglob("*.img"))) == 9
    state.set_status("p", "cancelled")
    assert preprocess_shard(state, "p", 0) == {"skipped": "job cancelled"}
