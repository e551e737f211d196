"""Device FPS after warm-up, batch latency percentiles, end-to-end FPS."""
from __future__ import annotations

import pytest

from tasks.metrics import device_metrics, job_metrics


def rec(device, seq, size, t0, dt, pid=1, shard=0):
    return {"host": "h", "device": device, "pid": pid, "seq": seq, "size": size, "t_start": t0, "t_end": t0 + dt,
            "shard": shard}


def test_fps_counts_device_calls_after_warmup_only():
    records = [rec("cpu:0", 0, 8, 0.0, 5.0)] + [rec("cpu:0", i, 8, 10.0 + i, 0.1) for i in range(1, 11)]
    m = device_metrics(records, warmup_batches=1)["h/cpu:0"]
    assert m["warmup_batches"] == 1 and m["measured_images"] == 80
    assert m["fps"] == pytest.approx(80 / 1.0)
    assert m["latency_ms"]["p50"] == pytest.approx(100.0)
    assert m["fps_with_warmup"] == pytest.approx(88 / 6.0)


def test_warmup_is_per_worker_process():
    records = [rec("cpu:0", 0, 4, 0, 1.0, pid=1), rec("cpu:0", 1, 4, 1, 0.2, pid=1),
               rec("cpu:0", 0, 4, 5, 1.0, pid=2), rec("cpu:0", 1, 4, 6, 0.2, pid=2)]
    m = device_metrics(records, warmup_batches=1)["h/cpu:0"]
    assert m["measured_batches"] == 2 and m["fps"] == pytest.approx(8 / 0.4) and m["workers"] == [1, 2]


def test_percentiles_and_job_totals():
    records = [rec("cpu:0", i, 1, i, (i + 1) / 100) for i in range(100)] + [rec("cpu:1", 0, 2, 0, 0.5)]
    j = job_metrics(records, 0, n_images=102, t_submit=100.0, t_reduce_start=110.0)
    lat = j["devices"]["h/cpu:0"]["latency_ms"]
    # numpy's linear interpolation over 10, 20, ..., 1000 ms: rank 0.5 x 99, 0.9 x 99, 0.99 x 99
    assert (lat["p50"], lat["p90"], lat["p99"]) == (pytest.approx(505.0), pytest.approx(901.0), pytest.approx(990.1))
    assert j["e2e_fps"] == pytest.approx(10.2)
    assert j["device_fps_total"] == pytest.approx(100 / sum((i + 1) / 100 for i in range(100)) + 4.0)
    assert not j["valid"]  # cpu:1 ran one batch: not enough for a steady rate


def test_waiting_for_tensors_names_the_bottleneck():
    from tasks.metrics import tensor_wait
    recs = [{"t_start": 0.0, "t_end": 1.0, "wait_s": 0.01}, {"t_start": 1.0, "t_end": 2.0, "wait_s": 0.0}]
    assert "the devices were the limit" in tensor_wait(recs)["tensor_wait_note"]
    slow = [dict(r, wait_s=0.5) for r in recs]
    out = tensor_wait(slow)
    assert out["tensor_wait_s"] == 1.0 and out["tensor_wait_fraction"] == 1.0 / 3.0
    assert "preprocessing, not the devices, was the bottleneck" in out["tensor_wait_note"]
    assert tensor_wait([{"t_start": 0.0, "t_end": 1.0}])["tensor_wait_s"] == 0.0  # records from before wait_s
