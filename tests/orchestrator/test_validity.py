"""The validity verdict (README, "What you get"): a device at the rule's minimums is valid, and so is the job."""
from __future__ import annotations

from orchestrator.reporting.data import validity
from orchestrator.reporting.markdown import _validity
from tasks.metrics import MIN_BATCHES, MIN_DEVICE_S, MIN_IMAGES, job_metrics

BATCH = MIN_IMAGES // MIN_BATCHES  # 10 batches of 10 images: 100 images


def records(batches: int, seconds_each: float, warmup: int = 2) -> list[dict]:
    """One worker's device calls: `warmup` first, then `batches` measured ones."""
    return [{"host": "h", "device": "cpu:0", "pid": 1, "seq": i, "size": BATCH, "shard": i,
             "t_start": 10.0 * i, "t_end": 10.0 * i + seconds_each} for i in range(warmup + batches)]


def report_of(recs: list[dict]) -> dict:
    n = sum(r["size"] for r in recs)
    return {"metrics": job_metrics(recs, 2, n, 0.0, 1000.0), "coverage": {"ok": True, "errors": []}}


def test_a_device_at_the_rules_minimums_is_valid_and_the_job_too():
    report = report_of(records(MIN_BATCHES, MIN_DEVICE_S / MIN_BATCHES))
    verdict = validity(report)
    assert verdict["devices"]["h/cpu:0"] == {"valid": True, "short": []}
    assert verdict["overall"] == {"valid": True, "short": []}
    assert report["metrics"]["valid"] is True
    assert "**Overall: VALID**" in _validity({"validity": verdict})


def test_one_batch_short_is_not_valid_and_says_what_fell_short():
    verdict = validity(report_of(records(MIN_BATCHES - 1, MIN_DEVICE_S)))  # seconds enough, batches not
    assert verdict["devices"]["h/cpu:0"]["short"] == [f"{MIN_BATCHES - 1} batches after warm-up, needs {MIN_BATCHES}",
                                                      f"{(MIN_BATCHES - 1) * BATCH} images after warm-up, needs "
                                                      f"{MIN_IMAGES}"]
    assert verdict["overall"]["valid"] is False
