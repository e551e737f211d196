"""The shard runner hands every batch to `backend.prefetch` before `infer` asks for it (a GPU backend copies it then)."""
from __future__ import annotations

import threading

import numpy as np

from tasks.params import JobParams
from tasks.shards import plan_shards, read_images
from workers.backends.base import Backend, empty_outputs
from workers.inference import run_shard


class PrefetchRecorder(Backend):
    """Remembers which batch objects were prefetched, from which thread, and what infer then got."""

    name = "prefetch-recorder"
    needs_pixels = True

    def __init__(self):
        self.prefetched: list = []
        self.inferred: list = []
        self.threads: set[str] = set()

    def prefetch(self, batch):
        self.threads.add(threading.current_thread().name)
        self.prefetched.append(batch)

    def infer(self, batch):
        assert any(p is batch for p in self.prefetched), "infer got a batch that was never prefetched"
        self.inferred.append(batch)
        return empty_outputs(len(batch.images))


def test_every_batch_is_prefetched_off_the_main_thread_before_it_runs(runner, selftest_set, tmp_path):
    ann, img = selftest_set
    images = read_images(ann)
    params = JobParams(job_id="p1", annotation=str(ann), image_dir=str(img), backend="groundtruth", batch=3,
                       size_mode="static", static_size=128, store=str(tmp_path / "store"))
    (shard,) = plan_shards(images, 3, 1, "static", 128, shard_size=len(images))
    runner.state.create(params, [shard])
    backend = PrefetchRecorder()
    payload = run_shard(runner, backend, params, 0, shard)
    assert len(payload["image_ids"]) == len(images)
    assert [id(b) for b in backend.inferred] == [id(b) for b in backend.prefetched]  # same objects, same order
    assert len(backend.inferred) == -(-len(images) // 3)
    assert threading.current_thread().name not in backend.threads  # the loader thread, off the device's path
    for batch in backend.inferred:
        assert batch.images.shape[1:] == (3, 128, 128) and batch.clip_hw.dtype == np.float32
        assert len(batch.clip_hw) == len(batch.images) >= len(batch.image_ids)
