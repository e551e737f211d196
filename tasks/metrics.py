"""Device FPS, batch latency and end-to-end FPS from a job's batch records (DESIGN.md section 9)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

MIN_IMAGES = 100
MIN_DEVICE_S = 20.0
MIN_BATCHES = 10
WAIT_BOTTLENECK = 0.05  # above this share of device time spent waiting for tensors, loading was the limit
VALIDITY_RULE = (f"an FPS figure is valid when its device ran, after warm-up, at least {MIN_BATCHES} batches, "
                 f"{MIN_IMAGES} images and {MIN_DEVICE_S:g} s of device calls (MLPerf-offline style: "
                 f"enough work for a steady rate)")


def device_name(record: dict) -> str:
    return f"{record['host']}/{record['device']}"


def device_metrics(records: list[dict], warmup_batches: int) -> dict[str, dict]:
    """Per device: images / summed device-call seconds after each worker's first `warmup_batches`."""
    by_device: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_device[device_name(rec)].append(rec)
    out = {}
    for name, recs in sorted(by_device.items()):
        measured = [r for r in recs if r["seq"] >= warmup_batches]
        seconds = [r["t_end"] - r["t_start"] for r in measured]
        all_s = sum(r["t_end"] - r["t_start"] for r in recs)
        images = sum(r["size"] for r in measured)
        device_s = float(sum(seconds))
        lat = np.asarray(seconds, dtype=np.float64) * 1000.0
        m = {
            "batches": len(recs),
            "images": sum(r["size"] for r in recs),
            "warmup_batches": len(recs) - len(measured),
            "measured_batches": len(measured),
            "measured_images": images,
            "device_s": device_s,
            "fps": images / device_s if device_s > 0 else None,
            "fps_with_warmup": sum(r["size"] for r in recs) / all_s if all_s > 0 else None,
            "latency_ms": ({q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p90", "p99")}
                           if lat.size else {"p50": None, "p90": None, "p99": None}),
            "shards": sorted({r["shard"] for r in recs}),
            "workers": sorted({r["pid"] for r in recs}),
            "tensor_wait_s": float(sum(r.get("wait_s", 0.0) for r in recs)),
        }
        m["valid"] = (len(measured) >= MIN_BATCHES and images >= MIN_IMAGES and device_s >= MIN_DEVICE_S)
        out[name] = m
    return out


def job_metrics(records: list[dict], warmup_batches: int, n_images: int,
                t_submit: float, t_reduce_start: float) -> dict:
    """Everything the report's FPS table needs."""
    devices = device_metrics(records, warmup_batches)
    wall = t_reduce_start - t_submit
    fps_values = [d["fps"] for d in devices.values() if d["fps"]]
    return {
        "devices": devices,
        "device_fps_total": float(sum(fps_values)) if fps_values else None,
        "e2e_fps": n_images / wall if wall > 0 else None,
        "wall_s": wall,
        "images": n_images,
        "valid": bool(devices) and all(d["valid"] for d in devices.values()),
        "validity_rule": VALIDITY_RULE,
        **tensor_wait(records),
    }


def tensor_wait(records: list[dict]) -> dict:
    """How long devices sat waiting for their next batch's tensors, and whether that made loading the bottleneck."""
    wait = float(sum(r.get("wait_s", 0.0) for r in records))
    busy = float(sum(r["t_end"] - r["t_start"] for r in records))
    fraction = wait / (wait + busy) if wait + busy > 0 else 0.0
    if fraction > WAIT_BOTTLENECK:
        note = (f"devices waited {wait:.1f} s for tensors ({fraction:.0%} of their time): preprocessing, "
                f"not the devices, was the bottleneck")
    else:
        note = f"devices waited {wait:.1f} s for tensors ({fraction:.0%} of their time): the devices were the limit"
    return {"tensor_wait_s": wait, "tensor_wait_fraction": fraction, "tensor_wait_note": note}
