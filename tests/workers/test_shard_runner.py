"""The body of evaluator.infer, called without Celery against a real Redis."""
from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from tasks.lease import DeviceLease
from tasks.params import JobParams
from tasks.shards import plan_shards, read_images
from tasks.state import JobState
from workers.inference import LeaseLost, ShardRunner


def make_job(state, ann, img, tmp_path, backend="groundtruth", model="", batch=4, size_mode="mmdet",
             shard_size=4, job_id="job1"):
    params = JobParams(job_id=job_id, annotation=str(ann), image_dir=str(img), backend=backend, model=str(model),
                       batch=batch, size_mode=size_mode, shard_size=shard_size, store=str(tmp_path / "store"))
    shards = plan_shards(read_images(ann), batch, 1, size_mode, params.static_size, shard_size)
    state.create(params, shards)
    state.set_status(job_id, "running")
    return params, shards


def gt_boxes(ann, image_id):
    data = json.loads(open(ann).read())
    return sorted((a["category_id"], a["bbox"]) for a in data["annotations"]
                  if a["image_id"] == image_id and not a["iscrowd"])


def test_shard_answers_every_image_and_records_each_batch(runner, selftest_set, tmp_path):
    ann, img = selftest_set
    _, shards = make_job(runner.state, ann, img, tmp_path, batch=2)
    out = runner("job1", 0)
    assert out["outcome"] == "written" and out["images"] == len(shards[0])
    payload = runner.state.results("job1")[0]
    assert sorted(payload["image_ids"]) == sorted(im["id"] for im in shards[0])
    for image_id in payload["image_ids"]:
        got = sorted((r["category_id"], r["bbox"]) for r in payload["results"] if r["image_id"] == image_id)
        want = gt_boxes(ann, image_id)
        assert [c for c, _ in got] == [c for c, _ in want]
        for (_, a), (_, b) in zip(got, want):
            assert a == pytest.approx(b, abs=1e-3)
    batches = runner.state.batches("job1")
    assert sum(b["size"] for b in batches) == len(shards[0]) and all(b["size"] <= 2 for b in batches)
    assert [b["seq"] for b in batches] == list(range(len(batches)))
    assert all(b["t_end"] >= b["t_start"] and b["device"] == "cpu:0" for b in batches)
    assert json.loads(runner.state.r.hget(runner.state.keys.leases(), runner.lease.key))["shard"] is None


def test_shard_delivered_twice_is_counted_once(runner, selftest_set, tmp_path, monkeypatch):
    ann, img = selftest_set
    make_job(runner.state, ann, img, tmp_path)
    first = runner("job1", 1)
    assert runner("job1", 1)["skipped"].startswith("duplicate")
    # two deliveries racing past the early check: the second write is refused by HSETNX
    start = runner.state.shard_start
    monkeypatch.setattr(runner.state, "shard_start", lambda job, shard: (lambda st, _, p: (st, False, p))(
        *start(job, shard)))
    assert runner("job1", 1)["outcome"] == "duplicate"
    s = runner.state.summary("job1")
    assert (s["shards_done"], s["images_done"]) == (1, first["images"])


def test_last_shard_enqueues_the_reducer_once(runner, selftest_set, tmp_path, monkeypatch):
    ann, img = selftest_set
    _, shards = make_job(runner.state, ann, img, tmp_path, batch=8, shard_size=8)
    sent = []

    class Sender:  # what the last shard's writer sends, instead of a broker's queue
        def reduce(self, job_id):
            sent.append(job_id)
    monkeypatch.setattr(runner.state, "_enqueuer", Sender())
    for i in range(len(shards)):
        runner("job1", i)
    start = runner.state.shard_start
    monkeypatch.setattr(runner.state, "shard_start", lambda job, shard: (lambda st, _, p: (st, False, p))(
        *start(job, shard)))
    runner("job1", len(shards) - 1)
    assert sent == ["job1"]


def test_unreadable_and_absent_images_are_listed_not_fatal(runner, selftest_set, tmp_path):
    ann, img = selftest_set
    broken = tmp_path / "images"
    shutil.copytree(img, broken)
    (broken / "000000000139.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (broken / "000000000285.png").unlink()
    make_job(runner.state, ann, broken, tmp_path, batch=8, shard_size=16)
    out = runner("job1", 0)
    payload = runner.state.results("job1")[0]
    assert out["unreadable"] == 2 and set(payload["unreadable"]) == {"139", "285"}
    assert "cannot decode image" in payload["unreadable"]["139"] and "285.png" in payload["unreadable"]["285"]
    assert len(payload["image_ids"]) == 8 and 139 not in payload["image_ids"]


def test_lost_lease_stops_the_shard_and_writes_nothing(redis_url, selftest_set, tmp_path):
    state = JobState.open(redis_url)
    lease = DeviceLease(state.r, "cpu:0", 0.3, host="h")  # no heartbeat: it expires
    lease.try_acquire()
    ann, img = selftest_set
    make_job(state, ann, img, tmp_path, backend="sim:200ms", batch=1, shard_size=4)
    runner = ShardRunner(state, lease)
    taken_over = []

    def take_over_later():
        time.sleep(0.5)  # our lease expired unreleased; another worker takes the device
        taken_over.append(DeviceLease(state.r, "cpu:0", 30.0, host="h", pid=99).try_acquire())
    threading.Thread(target=take_over_later).start()
    check = runner.check

    def heartbeat_then_check():
        if taken_over:
            lease.extend()  # what the heartbeat thread does: it finds the lease is not ours any more
        check()
    runner.check = heartbeat_then_check
    with pytest.raises(LeaseLost):
        runner("job1", 0)
    assert not state.has_result("job1", 0)
    taken, previous = taken_over[0]
    assert taken and previous["shard"]["shard"] == 0  # the new holder learns which shard to give back


def test_onnx_model_through_the_runner(runner, selftest_set, tmp_path, tiny_onnx):
    ann, img = selftest_set
    make_job(runner.state, ann, img, tmp_path, backend="onnxruntime", model=tiny_onnx, batch=4, shard_size=16)
    runner("job1", 0)
    payload = runner.state.results("job1")[0]
    sizes = {im["id"]: (im["w"], im["h"]) for im in read_images(ann)}
    assert len(payload["results"]) == len(payload["image_ids"]) == len(sizes)
    for r in payload["results"]:
        w, h = sizes[r["image_id"]]
        assert r["category_id"] == 3 and r["score"] == pytest.approx(0.9)
        assert r["bbox"] == pytest.approx([0, 0, w / 2, h / 2], abs=0.5)  # the clip region's top-left quarter


def test_backend_that_cannot_load_fails_the_job_with_one_line(runner, selftest_set, tmp_path):
    ann, img = selftest_set
    make_job(runner.state, ann, img, tmp_path, backend="onnxruntime", model=tmp_path / "absent.onnx")
    out = runner("job1", 0)
    assert "error" in out and runner.state.status("job1") == "failed"
    error = runner.state.summary("job1")["error"]
    assert "absent.onnx" in error and "\n" not in error
