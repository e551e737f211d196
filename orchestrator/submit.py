"""`submit`: one evaluation job, on the embedded local cluster (default) or a running one (--broker)."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import replace
from pathlib import Path

from orchestrator.bins import report_line, write_bins
from commandline import UsageError
from orchestrator.cli import add_broker_arg, add_run_dir_arg, open_state, positive_int
from orchestrator.cluster import ClusterError, LocalCluster, free_port
from orchestrator.control import lease_registry
from orchestrator.dashboard import AUTH_ENV, basic_auth
from orchestrator.inputs import resolve
from orchestrator.jobs import JobFailed, new_job_id, submit_job, wait_job
from orchestrator.manifest import build_manifest
from orchestrator.progress import JobProgress
from orchestrator.report_data import collect, derive
from orchestrator.report import render, sample_banner, stdout_console, write_run_files
from orchestrator.sweep import model_for, parse_batches, render_sweep, write_sweep
from model.preprocess import SIZE_MODES
from tasks.app import app
from evaluation.coco_eval import DEFAULT_EVALUATOR, EVALUATORS
from tasks.params import TIMINGS, ClusterTimings, JobParams
from tasks.shards import AnnotationError, read_images
from tasks.state import JobState
from workers.devices import discover, parse_device
from workers.reaper import Reaper


def live_devices(state: JobState) -> int:
    """Devices whose lease is held right now on this broker."""
    return sum(held for _, _, held in lease_registry(state))


def follow(state: JobState, params: JobParams, images: list[dict], n_devices: int, run_dir: Path,
           timings: ClusterTimings, check_alive=None, timeout_s: float | None = None,
           checkpoint: str | None = None, preprocess_first: bool = True) -> int:
    """Submit, show progress, print the final table, write the run folder; exit code 0 when done."""
    n_shards = submit_job(state, params, images, n_devices, build_manifest(params, checkpoint), preprocess_first)
    print(f"job {params.job_id}: {len(images)} images, {n_shards} shards of up to "
          f"{max(len(s) for s in state.all_shards(params.job_id).values())} images, batch {params.batch}, "
          f"{n_devices} device(s), backend {params.backend}; follow it with "
          f"`python -m orchestrator status {params.job_id} --broker {app.conf.broker_url}`", file=sys.stderr)
    return watch(state, params.job_id, run_dir, timings, check_alive, timeout_s)[0]


def follow_sweep(state: JobState, jobs: list[JobParams], images: list[dict], n_devices: int, run_root: Path,
                 timings: ClusterTimings, check_alive=None, timeout_s: float | None = None,
                 checkpoint: str | None = None) -> int:
    """One job per batch size, one after the other; only the first enqueues preprocessing (the store is warm
    after it). Then every job's report gets the whole sweep, and the sweep's own folder its table and plot."""
    code = 0
    for i, params in enumerate(jobs):
        code = max(code, follow(state, params, images, n_devices, run_root / params.job_id, timings, check_alive,
                                timeout_s, checkpoint, preprocess_first=i == 0))
        if state.report(params.job_id) is None:
            break  # failed or cancelled: the rest would fail the same way
    sweep_id = jobs[0].sweep
    reports = []
    for params in jobs:
        if state.report(params.job_id) is not None:
            report, batches, _ = collect(state, params.job_id, with_results=False)
            write_run_files(run_root / params.job_id, report, None, None, batches)
            reports.append(report)
    if reports:
        sweep = write_sweep(run_root / sweep_id, sweep_id, reports)
        render_sweep(sweep, stdout_console())
        print(f"sweep report: {run_root / sweep_id / 'report.md'}", file=sys.stderr)
        code = max(code, 0 if sweep["status"] == "done" and len(reports) == len(jobs) else 1)
    return code


def watch(state: JobState, job_id: str, run_dir: Path, timings: ClusterTimings, check_alive=None,
          timeout_s: float | None = None) -> tuple[int, dict | None]:
    """Progress until the job ends, then the table and the run folder: (exit code, report or None)."""
    n_images = int(state.summary(job_id).get("n_images", 0))
    reaper = Reaper(state, timings.reap_interval_s, stragglers=True).start()
    try:
        with JobProgress(job_id, n_images) as progress:
            report = wait_job(state, job_id, progress.update, check_alive, timeout_s=timeout_s)
    except (JobFailed, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, None
    finally:
        reaper.stop()
    report, batches, results = collect(state, job_id)
    derive(report)
    console = stdout_console()
    render(report, console)
    write_run_files(run_dir, report, results, console.export_text(), batches)
    print(f"run folder: {run_dir}", file=sys.stderr)
    return (0 if report["status"] == "done" else 1), report


def start_dashboard(cluster: LocalCluster, port: int | None) -> None:
    """Flower beside the embedded cluster, for as long as it runs; a login is made up when none is set."""
    auth = os.environ.get(AUTH_ENV)
    if auth:
        basic_auth()  # one-line error when malformed
        login = f"log in as {auth.split(':', 1)[0]}, password from {AUTH_ENV}"
    else:
        auth = f"evaluator:{secrets.token_urlsafe(9)}"
        login = f"user evaluator, password {auth.split(':', 1)[1]} (set {AUTH_ENV} to choose)"
    url = cluster.start_dashboard(port or free_port(), auth)
    print(f"dashboard: {url} (Flower, while this job runs; {login})", file=sys.stderr, flush=True)


def export_bins(images: list[dict], params: JobParams, out_dir: str) -> None:
    """The recipe's .bin and info files from the job's store (preprocessing on a miss, so the store is warm)."""
    try:
        summary = write_bins(images, params.image_dir, params.store, params.static_size, out_dir)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write the .bin files: {exc} (--write-bins)") from exc
    report_line(summary, out_dir)


def run(args) -> int:
    batches = parse_batches(args.batch)
    if args.dashboard and args.broker:
        raise UsageError("a running cluster has its own dashboard: python -m orchestrator dashboard --broker URL "
                         "(--dashboard)")
    if len(batches) > 1 and args.no_store:
        raise UsageError("a batch sweep preprocesses once into the tensor store: drop --no-store (--no-store)")
    template = args.model
    if args.model and "{batch}" in args.model:
        for b in batches:
            if not Path(model_for(args.model, b)).is_file():
                raise UsageError(f"model file not found for batch {b} ({model_for(args.model, b)})")
        template, args.model = str(Path(args.model).resolve()), model_for(args.model, batches[0])
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint file not found ({args.checkpoint})")
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    if args.shard_size < 0:
        raise UsageError(f"--shard-size must be 0 (automatic) or more, got {args.shard_size} (--shard-size)")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {args.warmup} (--warmup)")
    positive_int("--static-size", args.static_size)
    if args.write_bins and args.size_mode != "static":
        raise UsageError("the recipe's .bin files are S x S canvases: --write-bins needs --size-mode static "
                         "(--write-bins)")
    run_root = Path(args.run_dir).resolve()
    inputs = resolve(args.annotations, args.images, args.backend, args.model, run_root / "sample")
    try:
        images = read_images(inputs.annotation)
    except AnnotationError as exc:
        raise UsageError(str(exc)) from exc
    job_id = new_job_id()
    run_dir = run_root / job_id
    store = "" if args.no_store else str(Path(args.store or run_root / "store").resolve())
    params = JobParams(job_id=job_id, annotation=inputs.annotation, image_dir=inputs.image_dir,
                       backend=inputs.backend, model=inputs.model, precision=args.precision, batch=batches[0],
                       size_mode=args.size_mode, static_size=args.static_size, shard_size=args.shard_size,
                       warmup_batches=args.warmup, coco_eval=args.coco_eval, store=store, sample=inputs.sample)
    sweep = [replace(params, job_id=f"{job_id}-b{b}", batch=b, sweep=job_id,
                     model=model_for(template, b) if template and "{batch}" in template else params.model)
             for b in batches] if len(batches) > 1 else []

    def evaluate(state: JobState, n_devices: int, check_alive=None) -> int:
        if sweep:
            print(f"batch sweep {job_id}: batch sizes {', '.join(map(str, batches))}, one job each", file=sys.stderr)
            return follow_sweep(state, sweep, images, n_devices, run_root, timings, check_alive, args.timeout,
                                checkpoint)
        return follow(state, params, images, n_devices, run_dir, timings, check_alive, args.timeout, checkpoint)
    if args.write_bins:
        export_bins(images, params, args.write_bins)
    if inputs.sample:
        print(sample_banner(params.to_dict()), file=sys.stderr)
    timings = ClusterTimings.with_ttl(args.lease_ttl) if args.lease_ttl else TIMINGS
    if args.broker:
        state = open_state(args.broker)
        n = live_devices(state)
        if n == 0:
            print("warning: no device worker holds a lease on this broker yet; the job waits for one",
                  file=sys.stderr)
        return evaluate(state, max(1, n))
    try:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else discover()
        for d in devices:
            parse_device(d)
    except ValueError as exc:
        raise UsageError(str(exc).replace("(--device)", "(--devices)")) from exc
    if len(set(devices)) != len(devices):
        raise UsageError(f"a device is listed twice: {args.devices} (--devices)")
    try:
        with LocalCluster(run_dir, devices, inputs.backend, inputs.model, args.precision,
                          lease_ttl_s=args.lease_ttl) as cluster:
            if args.dashboard:
                start_dashboard(cluster, args.dashboard_port)
            state = open_state(cluster.url)
            return evaluate(state, len(devices), cluster.check_alive)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def register(sub) -> None:
    p = sub.add_parser(
        "submit", help="evaluate a model: box AP, device FPS, end-to-end FPS",
        description="Run one evaluation job. Without --broker it starts an embedded cluster (private Redis, "
                    "preprocessing pool, one worker per device) and stops it at the end. Without data it runs "
                    "a built-in sample whose AP means nothing.",
        epilog="examples:\n  python -m orchestrator submit --batch 8\n"
               "  python -m orchestrator submit --model checkpoints/dcn.pth --size-mode mmdet --batch 1\n"
               "  python -m orchestrator submit --backend sim:113ms --devices cpu:0,cpu:1\n"
               "  python -m orchestrator submit --model models/dcn_bs{batch}.om --batch 1,4,8,16\n"
               "  python -m orchestrator submit --broker redis://head:6379/0 --model /shared/model.om",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", help="COCO instances file (default data/coco/annotations/instances_val2017.json)")
    p.add_argument("--images", help="image folder (default data/coco/val2017, or beside the annotations)")
    p.add_argument("--model", help="model file; its type picks the backend: .pth torch, .onnx onnxruntime, .om ascend "
                                   "(default: checkpoints/*.pth)")
    p.add_argument("--backend", help="groundtruth, sim:113ms, onnxruntime, torch or ascend (default: from --model)")
    p.add_argument("--batch", default="8", help="batch size (default 8), or a sweep: 1,4,8,16 runs one job per "
                                                "batch size over the same preprocessed tensors")
    p.add_argument("--checkpoint", help="the .pth the model was exported from (recorded in the manifest)")
    p.add_argument("--size-mode", choices=SIZE_MODES, default="static",
                   help="static: the Ascend recipe's S x S canvas (default); mmdet: keep-ratio 1333x800")
    p.add_argument("--static-size", type=int, default=1216, help="S of the static canvas (default 1216)")
    p.add_argument("--precision", default="fp32", help="fp32 or fp16, for backends that support it")
    p.add_argument("--devices", help="comma-separated devices for the embedded cluster (default: discovered)")
    add_broker_arg(p, "submit to a running cluster at this Redis URL instead of starting one")
    add_run_dir_arg(p)
    p.add_argument("--store", help="tensor store folder (default RUN_DIR/store)")
    p.add_argument("--no-store", action="store_true", help="no tensor store: every shard preprocesses itself")
    p.add_argument("--shard-size", type=int, default=0, help="images per shard (default: 8+ shards per device)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up batches per worker left out of FPS (default 2)")
    p.add_argument("--coco-eval", choices=EVALUATORS, default=DEFAULT_EVALUATOR,
                   help=f"COCO evaluator: {DEFAULT_EVALUATOR} (default) or pycocotools, the reference; "
                        "both give the same 12 numbers")
    p.add_argument("--lease-ttl", type=float, help=f"device lease TTL in seconds (default {TIMINGS.lease_ttl_s:g})")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    p.add_argument("--write-bins", metavar="DIR",
                   help="first write the Ascend recipe's inputs from the tensor store: DIR/<stem>.bin (float32 "
                        "[3,S,S]), DIR.info and DIR_jpg.info as gen_dataset_info.py writes them, for Huawei's "
                        "benchmark tool")
    p.add_argument("--dashboard", action="store_true",
                   help=f"also start Flower on the embedded cluster and print its URL (login from {AUTH_ENV})")
    p.add_argument("--dashboard-port", type=int, help="Flower's port with --dashboard (default: a free one)")
    p.set_defaults(func=run)
