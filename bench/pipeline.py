"""How close the pipeline gets to the devices' limit: sim devices on the embedded cluster.

    .venv/bin/python bench/pipeline.py --devices 1 2 4 --images-per-device 80 --latency 113ms --batch 8

For each device count it runs one job (store warm: a first job fills it) and prints the ideal
device time, the measured time from submit to the last detection and to the report, their
ratio, and the device busy fraction (summed device-call time / (devices x wall)).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.cli import open_state  # noqa: E402
from orchestrator.cluster import LocalCluster  # noqa: E402
from orchestrator.jobs import new_job_id, submit_job, wait_job  # noqa: E402
from tasks.params import JobParams  # noqa: E402
from tasks.shards import read_images  # noqa: E402
from workers.backends.sim import parse_latency  # noqa: E402


def write_set(folder: Path, n: int) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        name = f"{i:06d}.jpg"
        cv2.imwrite(str(folder / "images" / name), np.full((48, 64, 3), i % 256, dtype=np.uint8))
        images.append({"id": i + 1, "file_name": name, "width": 64, "height": 48})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 40, 30], "area": 1200,
                     "iscrowd": 0})
    ann = folder / "annotations.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    return ann


def run(n_devices: int, images_per_device: int, latency: str, batch: int, folder: Path) -> dict:
    ann = write_set(folder / f"set{n_devices}", n_devices * images_per_device)
    devices = [f"cpu:{i}" for i in range(n_devices)]
    with LocalCluster(folder / f"cluster{n_devices}", devices, backend=f"sim:{latency}") as cluster:
        state = open_state(cluster.url)
        out = {}
        for label in ("cold", "warm"):
            params = JobParams(job_id=new_job_id(), annotation=str(ann), image_dir=str(ann.parent / "images"),
                               backend=f"sim:{latency}", batch=batch, size_mode="static", static_size=320,
                               store=str(folder / "store"), warmup_batches=0)
            submit_job(state, params, read_images(ann), n_devices)
            report = wait_job(state, params.job_id, check_alive=cluster.check_alive, timeout_s=3600)
            records = state.batches(params.job_id)
            t0 = report["timestamps"]["submit"]
            last = max(r["t_end"] for r in records) - t0
            busy = sum(r["t_end"] - r["t_start"] for r in records)
            out[label] = {"last_detection_s": last, "report_s": report["timestamps"]["done"] - t0,
                          "busy": busy / (n_devices * last), "ap": report["ap"]["stats"]["AP"]}
    n_batches = -(-images_per_device * n_devices // batch)
    out["ideal_s"] = n_batches * parse_latency(latency) / n_devices
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images-per-device", type=int, default=80)
    p.add_argument("--latency", default="113ms")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    print(f"{'devices':>7} {'ideal s':>8} {'store':>5} {'to last det s':>13} {'ratio':>6} {'to report s':>11} "
          f"{'busy':>5} {'AP':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.devices:
            r = run(n, args.images_per_device, args.latency, args.batch, Path(tmp))
            for label in ("cold", "warm"):
                m = r[label]
                print(f"{n:>7} {r['ideal_s']:>8.2f} {label:>5} {m['last_detection_s']:>13.2f} "
                      f"{m['last_detection_s'] / r['ideal_s']:>6.2f} {m['report_s']:>11.2f} {m['busy']:>5.2f} "
                      f"{m['ap']:>6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
