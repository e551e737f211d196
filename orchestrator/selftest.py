"""`selftest`: the generated set through real workers on a private Redis; box AP must be 1.000 everywhere."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from orchestrator.cli import add_broker_arg, add_run_dir_arg, broker_tls, open_state, positive_int
from orchestrator.cluster import ClusterError, LocalCluster
from orchestrator.jobs import JobFailed, new_job_id, submit_job, wait_job
from orchestrator.reporting.writer import write_run_files
from orchestrator.selftest_set import write_selftest_set
from model.preprocess import SIZE_MODES
from tasks.params import JobParams
from tasks.settings import TIMINGS
from tasks.shards import read_images
from workers.reaper import Reaper


def run_jobs(state, ann: Path, img: Path, store: Path, batches: list[int], modes: list[str], static_size: int,
             run_root: Path, check_alive=None) -> bool:
    images = read_images(ann)
    passed = True
    reaper = Reaper(state, TIMINGS.reap_interval_s).start()
    try:
        for mode in modes:
            for batch in batches:
                params = JobParams(job_id=new_job_id(), annotation=str(ann), image_dir=str(img),
                                   backend="groundtruth", batch=batch, size_mode=mode, static_size=static_size,
                                   store=str(store), warmup_batches=0)
                t0 = time.time()
                n_shards = submit_job(state, params, images, 1)
                label = f"selftest  size mode {mode:6s} batch {batch}:"
                try:
                    report = wait_job(state, params.job_id, check_alive=check_alive, timeout_s=300)
                except JobFailed as exc:
                    print(f"{label} FAILED: {exc}")
                    passed = False
                    continue
                write_run_files(run_root / params.job_id, report, None, "")
                ap = report["ap"]["stats"]["AP"]
                ok = report["status"] == "done" and abs(ap - 1.0) < 1e-9
                passed &= ok
                cov = "every image once" if report["coverage"]["ok"] else "; ".join(report["errors"])
                print(f"{label} box AP {ap:.3f}  ({len(images)} images, {n_shards} shards, {cov}, "
                      f"{time.time() - t0:.1f} s){'' if ok else '  FAILED'}", flush=True)
    finally:
        reaper.stop()
    return passed


def run(args) -> int:
    for b in args.batch:
        positive_int("--batch", b)
    positive_int("--static-size", args.static_size)
    run_root = Path(args.run_dir).resolve() / time.strftime("selftest-%Y%m%d-%H%M%S")
    ann, img = write_selftest_set(run_root / "data")
    store = run_root / "store"
    print(f"selftest: {len(read_images(ann))} generated images (odd sizes, gray/RGBA/CMYK, PNG/JPEG, crowd box, "
          f"empty image, boxes on borders) through the groundtruth backend; run folder {run_root}", file=sys.stderr)
    try:
        if args.broker:
            state = open_state(args.broker, broker_tls(args))
            passed = run_jobs(state, ann, img, store, args.batch, args.size_mode, args.static_size, run_root)
        else:
            with LocalCluster(run_root, args.devices.split(","), backend="groundtruth") as cluster:
                passed = run_jobs(open_state(cluster.url), ann, img, store, args.batch, args.size_mode,
                                  args.static_size, run_root, cluster.check_alive)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    n = len(args.batch) * len(args.size_mode)
    print(f"selftest passed: {n} jobs, box AP 1.000 each" if passed else "selftest FAILED")
    return 0 if passed else 1


def register(sub) -> None:
    p = sub.add_parser("selftest", help="prove the pipeline: generated set, groundtruth backend, box AP 1.000",
                       description="Run a generated COCO-format set through real workers on a private Redis with the "
                                   "groundtruth backend, for each batch size and size mode; every job must give "
                                   "box AP 1.000 with every image counted once.",
                       epilog="example: python -m orchestrator selftest --batch 1 8 --size-mode static")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8], help="batch sizes (default 1 4 8)")
    p.add_argument("--size-mode", nargs="+", choices=SIZE_MODES, default=list(SIZE_MODES),
                   help="size modes (default both)")
    p.add_argument("--static-size", type=int, default=1216, help="S of the static canvas (default 1216)")
    p.add_argument("--devices", default="cpu:0", help="devices of the embedded cluster (default cpu:0)")
    add_broker_arg(p, "use a running cluster instead of starting one")
    add_run_dir_arg(p)
    p.add_argument("--keep", action="store_true", help="keep the tensor store of the run")
    p.set_defaults(func=run)
