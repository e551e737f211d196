"""Time-to-AP against the devices' limit, from 1 to 64 simulated Ascend 310P cards on the embedded cluster.

    .venv/bin/python bench/scaling.py                     # the whole matrix (about 12 min on 2 cores)
    .venv/bin/python bench/scaling.py --devices 1 4 --no-full --no-hetero --no-loading   # a quick look

Sim devices run at the 310P's measured rate (batch 8 in 0.95 s, 8.42 FPS); before
each measured job a short warm-up job makes every device load its answers (a real device loads its
model before it takes work).
With `load=none` they read no file, so the orchestration alone is measured at every device count;
one row with `load=pixels` builds every float32 network input (1216) as a real device needs and
reports the CPU cost per image. "warm" means preprocessing is already done (no preprocessing work
during the job); "cold" starts from an empty tensor store, the pool preprocessing alongside.

Columns: ideal = device time if every device were busy from submit to the end (batches / devices x
latency, or by speed for mixed devices); last det = submit to the last detection; to AP = submit to
the report (AP computed); busy = summed device-call time / (devices x last det); steady = the same
between the last device's first call and the first device's last call; overhead/shard = idle device
time per shard ((devices x last det - busy) / shards); first call = submit to the first device call;
Redis MB = memory of the job's keys; eval = the reducer's COCOeval seconds; after last = the last detection
to the AP (what the evaluation adds after the last shard). Sim devices answer like a detector by default
(`answers=detector`: up to 100 detections an image, AP below 1), `--answers groundtruth` as before.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.cli import open_state  # noqa: E402
from orchestrator.cluster import LocalCluster, _signal_group  # noqa: E402
from orchestrator.generated_set import make_annotations, write_set  # noqa: E402
from orchestrator.jobs import new_job_id, submit_job, wait_job  # noqa: E402
from tasks.params import JobParams  # noqa: E402
from tasks.shards import read_images  # noqa: E402
from tasks.store import TensorStore  # noqa: E402
from workers.reaper import Reaper  # noqa: E402

BATCH = 8
SIZE = 1216
RECORDS: Path | None = None  # --records: every job's batch records and shard times, for a closer look


def subset(folder: Path, data: dict, n: int) -> Path:
    """An annotation file with the first n images (and their boxes)."""
    path = folder / f"instances_{n}.json"
    if not path.is_file():
        images = data["images"][:n]
        ids = {im["id"] for im in images}
        path.write_text(json.dumps({"images": images, "categories": data["categories"],
                                    "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}))
    return path


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and their waited-for children."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


class Rack:
    """The embedded cluster with up to N sim devices; `shrink` stops the devices above a count."""

    def __init__(self, folder: Path, n: int):
        self.devices = [f"cpu:{i}" for i in range(n)]
        self.cluster = LocalCluster(folder, self.devices, backend="sim:950ms,load=none")

    def __enter__(self) -> "Rack":
        t0 = time.time()
        self.cluster.start()
        self.state = open_state(self.cluster.url)
        while self.state.leases.registered() < len(self.devices) or not self._ready():
            self.cluster.check_alive()
            time.sleep(0.5)
        print(f"# {len(self.devices)} device workers ready in {time.time() - t0:.0f} s", file=sys.stderr)
        return self

    def _ready(self) -> bool:
        logs = self.cluster.run_dir / "logs"
        return all(" ready." in (logs / f"{d.replace(':', '')}.log").read_text(errors="replace")
                   for d in self.devices) and " ready." in (logs / "preprocess.log").read_text(errors="replace")

    def shrink(self, n: int) -> None:
        for device in self.devices[n:]:
            proc = self.cluster.procs.pop(device.replace(":", ""))
            _signal_group(proc, 15)
            proc.wait(30)
        self.devices = self.devices[:n]

    def device_pids(self) -> list[int]:
        return [p.pid for name, p in self.cluster.procs.items() if name.startswith("cpu")]

    def __exit__(self, *exc) -> None:
        self.cluster.stop()


def warm_up(rack: Rack, ann: Path, backend: str) -> None:
    """Every device loads the sim's answers for `ann` and, with `load=pixels`, makes its batch input arrays (a real
    device loads its model and allocates its inputs before a job; a fresh worker's first arrays cost their first
    touch: about 1 s for four devices' first two batches at once here)."""
    state, images = rack.state, read_images(ann)
    pixels = "load=pixels" in backend
    batch = BATCH if pixels else 1
    for _ in range(3):
        params = JobParams(job_id=new_job_id(), annotation=str(ann), image_dir=str(ann.parent / "images"),
                           backend=backend, batch=batch, shard_size=2 * batch, warmup_batches=0, size_mode="static",
                           static_size=SIZE)
        submit_job(state, params, images[:2 * batch * len(rack.devices)], len(rack.devices), preprocess_first=False)
        wait_job(state, params.job_id, check_alive=rack.cluster.check_alive, timeout_s=300)
        ran = {r["device"] for r in state.batches(params.job_id)}
        state.delete_job(params.job_id)
        if ran >= set(rack.devices):
            return


def run_job(rack: Rack, ann: Path, backend: str, store: str, ideal_s: float) -> dict:
    state = rack.state
    warm_up(rack, ann, backend)
    images = read_images(ann)
    params = JobParams(job_id=new_job_id(), annotation=str(ann), image_dir=str(ann.parent / "images"),
                       backend=backend, batch=BATCH, size_mode="static", static_size=SIZE, warmup_batches=0,
                       store=store)
    cpu0 = cpu_seconds(rack.device_pids())
    reaper = Reaper(state, 5.0, stragglers=True).start()  # what `submit` runs beside a job
    try:
        n_shards = submit_job(state, params, images, len(rack.devices), preprocess_first=bool(store))
        report = wait_job(state, params.job_id, check_alive=rack.cluster.check_alive, poll_s=0.05, timeout_s=900)
    finally:
        reaper.stop()
    cpu = cpu_seconds(rack.device_pids()) - cpu0
    records = state.batches(params.job_id)
    t0 = report["timestamps"]["submit"]
    last = max(r["t_end"] for r in records) - t0
    busy = sum(r["t_end"] - r["t_start"] for r in records)
    by_device: dict[str, list] = {}
    for r in records:
        by_device.setdefault(r["device"], []).append(r)
    w0 = max(min(r["t_start"] for r in rs) for rs in by_device.values())
    w1 = min(max(r["t_end"] for r in rs) for rs in by_device.values())
    steady = (sum(max(0.0, min(r["t_end"], w1) - max(r["t_start"], w0)) for r in records)
              / (len(by_device) * (w1 - w0)) if w1 > w0 else float("nan"))
    n = len(rack.devices)
    out = {"devices": n, "images": len(images), "ideal_s": ideal_s, "last_s": last,
           "ap_s": report["timestamps"]["done"] - t0, "busy": busy / (n * last), "steady": steady,
           "overhead_ms": (n * last - busy) / n_shards * 1000, "shards": n_shards,
           "first_s": min(r["t_start"] for r in records) - t0, "redis_mb": state.job_memory_mb(params.job_id),
           "eval_s": report["timestamps"]["evaluate_s"], "ap": report["ap"]["stats"]["AP"],
           "ok": report["status"] == "done" and report["coverage"]["ok"],
           "wait_s": sum(r.get("wait_s", 0.0) for r in records), "cpu_s": cpu,
           "wait_note": report["metrics"].get("tensor_wait_note", ""),
           "wait_fraction": report["metrics"].get("tensor_wait_fraction", 0.0),
           "reducer": report["reducer"], "t_reduce_start": report["timestamps"]["reduce_start"] - t0}
    if RECORDS:
        RECORDS.mkdir(parents=True, exist_ok=True)
        backend = params.backend.replace(":", "_").replace(",", "_").replace("@", "_")
        name = f"{n}dev-{backend}-{len(images)}{'-store' if store else ''}.json"  # a store: the cold or loading row
        (RECORDS / name).write_text(json.dumps({"out": out, "batches": records,
                                                "shard_times": state.shard_times(params.job_id, 100000)}))
    state.delete_job(params.job_id)  # keep Redis small
    return out


HEADER = (f"{'devices':>7} {'images':>6} {'ideal s':>7} {'last det':>8} {'ratio':>5} {'to AP':>6} {'ratio':>5} "
          f"{'busy':>5} {'steady':>6} {'ovh/shard ms':>12} {'shards':>6} {'first call':>10} {'Redis MB':>8} "
          f"{'eval s':>6} {'after last':>10} {'AP':>5} ok")


def row(label: str, m: dict) -> str:
    return (f"{m['devices']:>7} {m['images']:>6} {m['ideal_s']:>7.2f} {m['last_s']:>8.2f} "
            f"{m['last_s'] / m['ideal_s']:>5.2f} {m['ap_s']:>6.2f} {m['ap_s'] / m['ideal_s']:>5.2f} "
            f"{m['busy']:>5.2f} {m['steady']:>6.2f} {m['overhead_ms']:>12.0f} {m['shards']:>6} {m['first_s']:>10.2f} "
            f"{m['redis_mb']:>8.2f} {m['eval_s']:>6.2f} {m['ap_s'] - m['last_s']:>10.2f} {m['ap']:>5.3f} "
            f"{'yes' if m['ok'] else 'NO'}  {label}")


def warm(ann: Path, store: Path) -> float:
    """Preprocess every image of `ann` into `store` with one process per core; returns images/s."""
    from concurrent.futures import ProcessPoolExecutor
    files = [str(ann.parent / "images" / im["file"]) for im in read_images(ann)]
    t0 = time.time()
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_warm_one, [(f, str(store)) for f in files], chunksize=16))
    return len(files) / (time.time() - t0)


def _warm_one(arg) -> None:
    path, store = arg
    TensorStore(store).load(path, "static", SIZE, pixels=False)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--answers", choices=("detector", "groundtruth"), default="detector",
                   help="what the sim devices answer (default detector: up to 100 detections an image, AP < 1)")
    p.add_argument("--per-device", type=int, default=160, help="images per device in weak scaling (default 160)")
    p.add_argument("--latency-ms", type=float, default=950.0, help="sim latency per batch of 8 (default 950)")
    p.add_argument("--full", type=int, default=5000, help="images of the full generated set (default 5000)")
    p.add_argument("--no-full", action="store_true", help="skip the full set (warm and cold) on the most devices")
    p.add_argument("--hetero", type=int, nargs="*", default=[4, 16, 32],
                   help="device counts of the mixed table (half at 2x the latency)")
    p.add_argument("--no-hetero", action="store_true")
    p.add_argument("--loading", type=int, default=4, help="devices of the loading-on row (load=pixels, warm store)")
    p.add_argument("--no-loading", action="store_true")
    p.add_argument("--workdir", help="keep the sets and stores here (default: a temporary folder)")
    p.add_argument("--records", help="write each job's batch records and shard times to this folder")
    args = p.parse_args()
    global RECORDS
    RECORDS = Path(args.records) if args.records else None
    lat = args.latency_ms / 1000.0
    sim = f"sim:{args.latency_ms:g}ms,answers={args.answers}"
    counts = sorted(set(args.devices), reverse=True)
    hetero = [] if args.no_hetero else sorted(set(args.hetero) & set(counts), reverse=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scaling-"))
    n_max = max([args.per_device * max(counts)] + ([] if args.no_full else [args.full]))
    t0 = time.time()
    n_files = max([0] + ([] if args.no_full else [args.full]) + ([] if args.no_loading else
                                                                     [args.per_device * args.loading]))
    write_set(work / "set", n_files, seed=0, images=True)  # also makes the folders when no file is needed
    data = make_annotations(n_max, seed=0)
    print(f"# generated {n_max} images' annotations ({n_files} image files) in {time.time() - t0:.0f} s; "
          f"sim {args.latency_ms:g} ms per batch of {BATCH} ({BATCH / lat:.2f} FPS per device); "
          f"{os.cpu_count()} cores", flush=True)
    weak, mixed, full, loading = [], [], [], None
    with Rack(work / "cluster", counts[0]) as rack:
        for n in counts:
            if n < len(rack.devices):
                rack.shrink(n)
            ann = subset(work / "set", data, args.per_device * n)
            if not args.no_full and n == counts[0]:
                full_ann = subset(work / "set", data, args.full)
                ideal = math.ceil(args.full / BATCH) * lat / n
                cold = work / "cold_store"
                full.append(("warm", run_job(rack, full_ann, f"{sim},load=none", "", ideal)))
                print(row("full, warm", full[-1][1]), flush=True)
                full.append(("cold", run_job(rack, full_ann, f"{sim},load=none", str(cold), ideal)))
                print(row("full, cold", full[-1][1]), flush=True)
                shutil.rmtree(cold, ignore_errors=True)
            ideal = math.ceil(args.per_device * n / BATCH) * lat / n
            weak.append(run_job(rack, ann, f"{sim},load=none", "", ideal))
            print(row("weak", weak[-1]), flush=True)
            if n in hetero and n >= 2:
                slow = f"cpu:{n // 2}-{n - 1}"
                speed = (n - n // 2) / (2 * lat) + (n // 2) / lat
                mixed.append(run_job(rack, ann, f"{sim},load=none,slow=2@{slow}", "",
                                     math.ceil(args.per_device * n / BATCH) / speed))
                print(row("mixed: half at 2x latency, ideal split by speed", mixed[-1]), flush=True)
            if not args.no_loading and n == args.loading:
                store = work / "warm_store"
                load_ann = subset(work / "set", data, args.per_device * n)
                rate = warm(load_ann, store)
                os.sync()  # the store's 1.9 GB written back to disk now, not while the devices read it
                print(f"# warmed the store: {rate:.0f} images/s preprocessing (1216 static, {os.cpu_count()} "
                      f"processes)", flush=True)
                loading = run_job(rack, load_ann, f"{sim},load=pixels", str(store), ideal)
                print(row("loading on (load=pixels, warm store)", loading), flush=True)
                shutil.rmtree(store, ignore_errors=True)
    print()
    print(f"weak scaling: {args.per_device} images per device, warm, load=none (orchestration alone)")
    print(HEADER)
    for m in sorted(weak, key=lambda m: m["devices"]):
        print(row("", m))
    if full:
        print(f"\nfull generated set ({args.full} images) on {counts[0]} devices, load=none")
        print(HEADER)
        for label, m in full:
            print(row(label, m))
    if mixed:
        print("\nmixed devices: half at 2x the latency; ideal = the split by speed")
        print(HEADER)
        for m in sorted(mixed, key=lambda m: m["devices"]):
            print(row("", m))
    if loading:
        per_image_ms = loading["cpu_s"] / loading["images"] * 1000
        fps = BATCH / lat
        limit = (os.cpu_count() or 1) * 1000 / (per_image_ms * fps)
        print(f"\nloading on: {loading['devices']} devices, load=pixels (float32 1216 inputs built from the warm "
              f"store), {loading['images']} images")
        print(HEADER)
        print(row("", loading))
        print(f"devices waited for tensors {loading['wait_fraction']:.2%} of their time (wait / (wait + device "
              f"calls), the report's figure; {loading['wait_s']:.2f} s in all)")
        print(f"device workers' CPU: {per_image_ms:.1f} ms per image; at {fps:.2f} FPS per device this machine's "
              f"{os.cpu_count()} cores carry about {limit:.0f} devices' loading, beyond that the cores, not the "
              f"orchestration, are the limit. {loading['wait_note']}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
