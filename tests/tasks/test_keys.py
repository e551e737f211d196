"""One key layout under one prefix: two deployments share a Redis without seeing each other's jobs or queues."""
from __future__ import annotations

import json

from tasks.keys import Keys
from tasks.params import JobParams
from tasks.state import JobState


def test_two_prefixes_on_one_redis_keep_their_jobs_and_queues_apart(redis_url):
    a, b = JobState.open(redis_url, Keys("rack-a")), JobState.open(redis_url, Keys("rack-b"))
    shard = [[{"id": 1, "file": "1.jpg", "w": 10, "h": 10}]]
    a.create(JobParams(job_id="j", annotation="a.json", image_dir="img", backend="groundtruth"), shard)
    b.create(JobParams(job_id="j", annotation="b.json", image_dir="img", backend="groundtruth"), shard)
    a.tasks.infer("j", 0, 1)
    assert a.params("j").annotation == "a.json" and b.params("j").annotation == "b.json"
    assert [t.kwargs["shard"] for t in a.queued(["infer"], "j")] == [0] and b.queued(["infer"], "j") == []
    every_key = set(a.r.keys("*"))
    # nothing outside the two prefixes, kombu's bindings included
    assert every_key and all(k.startswith(("rack-a:", "rack-b:", "_kombu")) for k in every_key), every_key
    assert json.loads(a.r.hget("rack-a:job:j", "params"))["annotation"] == "a.json"


def test_every_key_of_a_job_is_under_its_prefix():
    keys = Keys("p")
    assert all(k.startswith("p:job:x") for k in keys.job_parts("x"))
    assert keys.fence(keys.lease("h", "npu:0")) == "p:lease:h:npu:0:fence" and keys.queue("infer") == "p:infer"
