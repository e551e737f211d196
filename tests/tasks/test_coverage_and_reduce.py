"""The reducer: every image id exactly once, named when not; COCOeval once on the union."""
from __future__ import annotations

import pytest

from reduce_support import FENCE, create_job, perfect_payload
from tasks.reduce import check_coverage, reduce_job, union_results


def test_coverage_names_missing_duplicated_unexpected_and_unreadable():
    shards = {0: [], 1: [], 2: []}
    results = {0: {"image_ids": [1, 2], "unreadable": {"3": "cannot decode image (3.jpg)"}, "results": []},
               2: {"image_ids": [2, 9], "unreadable": {}, "results": []}}
    cov = check_coverage([1, 2, 3, 4, 5], shards, results)
    assert (cov["missing"], cov["duplicated"], cov["unexpected"]) == ([4, 5], [2], [9])
    assert cov["unreadable"] == {"3": "cannot decode image (3.jpg)"}
    assert cov["shards_without_result"] == [1] and not cov["ok"]
    assert any("missing image ids (2): 4, 5" in e and "shards without a result: 1" in e for e in cov["errors"])
    assert any("duplicated image ids (1): 2" in e for e in cov["errors"])


def test_unreadable_images_are_covered_not_errors():
    results = {0: {"image_ids": [1], "unreadable": {"2": "cannot read image (2.jpg)"}, "results": []}}
    cov = check_coverage([1, 2], {0: []}, results)
    assert cov["ok"] and cov["errors"] == []


def test_union_takes_each_image_once():
    results = {1: {"image_ids": [5], "results": [{"image_id": 5, "n": "late"}]},
               0: {"image_ids": [5, 6], "results": [{"image_id": 5, "n": "first"}, {"image_id": 6, "n": "x"}]}}
    assert [r["n"] for r in union_results(results)] == ["first", "x"]


@pytest.fixture
def finished_job(redis_url, selftest_set):
    state, shards = create_job(redis_url, selftest_set, "r1", 4)
    for i, shard in enumerate(shards):
        state.write_result("r1", i, perfect_payload(selftest_set[0], shard), FENCE, 1)
    return state, shards


def test_complete_job_reduces_to_ap_one(finished_job):
    state, _ = finished_job
    report = reduce_job(state, "r1")
    assert report["status"] == "done" and report["errors"] == []
    assert report["ap"]["stats"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert state.status("r1") == "done" and state.report("r1")["job"] == "r1"


def test_deleted_shard_result_makes_the_reducer_name_the_missing_ids(finished_job):
    state, shards = finished_job
    state.r.hdel(state.keys.job_part("r1", "results"), "1")
    report = reduce_job(state, "r1")
    missing = sorted(im["id"] for im in shards[1])
    assert report["status"] == "failed" and state.status("r1") == "failed"
    assert report["coverage"]["missing"] == missing
    assert report["errors"][0].startswith(f"missing image ids ({len(missing)}): " + ", ".join(map(str, missing)))
    assert report["ap"]["stats"]["AP"] < 1.0  # the missing images count as undetected, never dropped
