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


def one_shard_job(runner, selftest_set, tmp_path, job_id: str, batch: int, images: int | None = None):
    """A job of one shard (the first `images` of the set, all by default) at 128 static: (params, its items)."""
    ann, img = selftest_set
    items = read_images(ann)[:images]
    params = JobParams(job_id=job_id, annotation=str(ann), image_dir=str(img), backend="groundtruth", batch=batch,
                       size_mode="static", static_size=128, store=str(tmp_path / "store"))
    (shard,) = plan_shards(items, batch, 1, "static", 128, shard_size=len(items))
    runner.state.create(params, [shard])
    return params, shard


def test_every_batch_is_prefetched_off_the_main_thread_before_it_runs(runner, selftest_set, tmp_path):
    params, shard = one_shard_job(runner, selftest_set, tmp_path, "p1", 3)
    images = shard
    backend = PrefetchRecorder()
    payload = run_shard(runner, backend, params, 0, shard)
    assert len(payload["image_ids"]) == len(images)
    assert [id(b) for b in backend.inferred] == [id(b) for b in backend.prefetched]  # same objects, same order
    assert len(backend.inferred) == -(-len(images) // 3)
    assert threading.current_thread().name not in backend.threads  # the loader thread, off the device's path
    for batch in backend.inferred:
        assert batch.images.shape[1:] == (3, 128, 128) and batch.clip_hw.dtype == np.float32
        assert len(batch.clip_hw) == len(batch.images) >= len(batch.image_ids)


class PixelEcho(Backend):
    """Answers each image with one detection whose score is its input's checksum (a batch mixed up with another
    would answer another image's)."""

    name = "pixel-echo"
    needs_pixels = True

    def infer(self, batch):
        dets, labels = empty_outputs(len(batch.images))
        for row in range(len(batch.image_ids)):
            dets[row, 0] = (0, 0, 8, 8, checksum(batch.images[row]))
            labels[row, 0] = 0
        return dets, labels


def checksum(image: np.ndarray) -> float:
    return float(np.abs(image).astype(np.float64).sum() % 997 + 1)


def test_batch_arrays_used_again_hold_each_batch_own_pixels(runner, selftest_set, tmp_path):
    """Arrays are handed back after the device answered and reused: every image still gets its own input."""
    from tasks.store import TensorStore
    from model.preprocess import to_network_input
    params, shard = one_shard_job(runner, selftest_set, tmp_path, "p2", 2)
    images, img = shard, selftest_set[1]
    payload = run_shard(runner, PixelEcho(), params, 0, shard)
    store = TensorStore(str(tmp_path / "store"))
    assert len(payload["results"]) == len(images) >= 6  # at least three batches: the first arrays came back
    for result in payload["results"]:
        item = next(it for it in shard if it["id"] == result["image_id"])
        entry = store.load(img / item["file"], "static", 128, True)
        own = np.zeros((3, 128, 128), np.float32)
        assert result["score"] == np.float32(checksum(to_network_input(entry.resized, entry.meta, out=own)))
    assert runner.buffers._free  # arrays were handed back for the next batches


def test_a_shard_with_a_non_finite_box_is_marked_for_json(runner, selftest_set, tmp_path):
    """A NaN box (a broken model) must reach the evaluation as NaN: the runner says so, the write uses json."""
    class NanBox(PixelEcho):
        def infer(self, batch):
            dets, labels = super().infer(batch)
            dets[0, 0, 2] = np.nan
            return dets, labels
    params, shard = one_shard_job(runner, selftest_set, tmp_path, "p3", 2, images=4)
    assert run_shard(runner, NanBox(), params, 0, shard)["finite"] is False
    assert run_shard(runner, PixelEcho(), params, 0, shard)["finite"] is True
