"""`submit`: one evaluation job (or a batch sweep), on the embedded local cluster (default) or a running one."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from commandline import UsageError
from orchestrator.bins import report_line, write_bins
from orchestrator.cli import (add_broker_arg, add_broker_timeout_arg, add_run_dir_arg, broker_tls, check_broker_timeout,
                              open_state, positive_int)
from orchestrator.cluster import ClusterError, LocalCluster
from orchestrator.compare import run_compare
from orchestrator.comparison import load_run
from orchestrator.dashboard import AUTH_ENV, start_dashboard
from orchestrator.inputs import resolve
from orchestrator.jobs import Watcher, live_devices, new_job_id, run_job
from orchestrator.manifest import sha256_file
from orchestrator.model_files import check_model_file
from orchestrator.reporting.console import sample_banner
from orchestrator.sweep import batch_models, follow_sweep, parse_batches, sweep_jobs
from evaluation.coco_eval import DEFAULT_EVALUATOR, EVALUATORS
from model.preprocess import SIZE_MODES
from tasks.params import JobParams
from tasks.settings import TIMINGS, ClusterTimings
from tasks.shards import AnnotationError, read_images
from tasks.state import JobState
from workers.backends import PRECISIONS, check_precision
from workers.devices import discover, parse_device


@dataclass(frozen=True)
class Submission:
    """What one submit runs: one job, or one per batch size of a sweep, over the same images."""

    jobs: list[JobParams]
    images: list[dict]
    checkpoint: str | None = None  # the .pth an exported model came from, for the manifest

    @property
    def sample(self) -> bool:
        return self.jobs[0].sample

    @property
    def folder(self) -> Path:
        """The run folder of the whole submit (the embedded cluster's): the job's, or the sweep's."""
        first = self.jobs[0]
        return Path(first.run_dir).parent / (first.sweep or first.job_id)

    def run(self, state: JobState, n_devices: int, watcher: Watcher) -> int:
        """Every job to its report; the exit code (0 when all are done)."""
        if len(self.jobs) == 1:
            return run_job(state, self.jobs[0], self.images, n_devices, watcher, self.checkpoint)
        print(f"batch sweep {self.jobs[0].sweep}: batch sizes {', '.join(str(p.batch) for p in self.jobs)}, "
              "one job each", file=sys.stderr)
        return follow_sweep(state, self.jobs, self.images, n_devices, watcher, self.checkpoint)


def check_flags(args) -> list[int]:
    """The batch sizes; a one-line error for each flag that cannot work, before any file is read."""
    batches = parse_batches(args.batch)
    if args.dashboard and args.broker:
        raise UsageError("a running cluster has its own dashboard: python -m orchestrator dashboard --broker URL "
                         "(--dashboard)")
    if len(batches) > 1 and args.no_store:
        raise UsageError("a batch sweep preprocesses once into the tensor store: drop --no-store (--no-store)")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UsageError(f"checkpoint file not found ({args.checkpoint})")
    if args.shard_size < 0:
        raise UsageError(f"--shard-size must be 0 (automatic) or more, got {args.shard_size} (--shard-size)")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {args.warmup} (--warmup)")
    check_broker_timeout(args)
    if args.durable and args.broker:
        raise UsageError("--durable sets how the embedded Redis writes its file; a running cluster's Redis has its "
                         "own appendfsync setting (--durable)")
    positive_int("--static-size", args.static_size)
    try:
        check_precision(args.precision)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.write_bins and args.size_mode != "static":
        raise UsageError("the recipe's .bin files are S x S canvases: --write-bins needs --size-mode static "
                         "(--write-bins)")
    return batches


def plan(args, batches: list[int]) -> Submission:
    """The inputs resolved, every model file opened and the annotation file read: the jobs to submit."""
    models = batch_models(args.model, batches)
    run_root = Path(args.run_dir).resolve()
    inputs = resolve(args.annotations, args.images, args.backend, models.get(batches[0], args.model),
                     run_root / "sample")
    for model in sorted({m for m in (*models.values(), inputs.model) if m}):
        check_model_file(inputs.backend, model, args.size_mode, args.static_size)
    try:
        images = read_images(inputs.annotation)
    except AnnotationError as exc:
        raise UsageError(str(exc)) from exc
    job_id = new_job_id()
    store = "" if args.no_store else str(Path(args.store or run_root / "store").resolve())
    params = JobParams(job_id=job_id, annotation=inputs.annotation, image_dir=inputs.image_dir,
                       backend=inputs.backend, model=inputs.model, precision=args.precision, batch=batches[0],
                       size_mode=args.size_mode, static_size=args.static_size, shard_size=args.shard_size,
                       warmup_batches=args.warmup, coco_eval=args.coco_eval, store=store, sample=inputs.sample,
                       run_dir=str(run_root / job_id))
    jobs = sweep_jobs(params, batches, models) if len(batches) > 1 else [params]
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    if args.compare_with:
        check_compare_with(args.compare_with, run_root, inputs.annotation, len(jobs))
    return Submission(jobs, images, checkpoint)


def check_compare_with(run: str, run_root: Path, annotation: str, n_jobs: int) -> None:
    """The run to compare with must be finished and on the same annotation file: said before the job starts."""
    if n_jobs > 1:
        raise UsageError("--compare-with compares one job with a run: give one batch size (--compare-with)")
    other = load_run(run, run_root)
    theirs = (other.report.get("manifest") or {}).get("annotation_sha256")
    if theirs and theirs != sha256_file(annotation):
        raise UsageError(f"run {other.name} evaluated another annotation file ({other.report['params']['annotation']}) "
                         "(--compare-with)")


def embedded_devices(spec: str | None) -> list[str]:
    """The embedded cluster's devices: `--devices`, else every one discovered on this host."""
    try:
        devices = [d.strip() for d in spec.split(",") if d.strip()] if spec else discover()
        for d in devices:
            parse_device(d)
    except ValueError as exc:
        raise UsageError(str(exc).replace("(--device)", "(--devices)")) from exc
    if len(set(devices)) != len(devices):
        raise UsageError(f"a device is listed twice: {spec} (--devices)")
    return devices


def export_bins(images: list[dict], params: JobParams, out_dir: str) -> None:
    """The recipe's .bin and info files from the job's store (preprocessing on a miss, so the store is warm)."""
    try:
        summary = write_bins(images, params.image_dir, params.store, params.static_size, out_dir)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write the .bin files: {exc} (--write-bins)") from exc
    report_line(summary, out_dir)


def run(args) -> int:
    batches = check_flags(args)
    submission = plan(args, batches)
    devices = None if args.broker else embedded_devices(args.devices)
    code = evaluate(args, submission, devices)
    job_dir = Path(submission.jobs[0].run_dir)
    if args.compare_with and (job_dir / "report.json").is_file():
        run_compare(args.compare_with, str(job_dir), Path(args.run_dir))
    return code


def evaluate(args, submission: Submission, devices: list[str] | None) -> int:
    """The jobs run, on the given broker or an embedded cluster; the exit code of their reports."""
    if args.write_bins:
        export_bins(submission.images, submission.jobs[0], args.write_bins)
    if submission.sample:
        print(sample_banner(submission.jobs[0].to_dict()), file=sys.stderr)
    timings = ClusterTimings.with_ttl(args.lease_ttl) if args.lease_ttl else TIMINGS
    if args.broker:
        state = open_state(args.broker, broker_tls(args))
        watcher = Watcher(timings, None, args.timeout, args.broker_timeout)
        return submission.run(state, max(1, live_devices(state, warn=True)), watcher)
    first = submission.jobs[0]
    try:
        with LocalCluster(submission.folder, devices, first.backend, first.model, args.precision,
                          lease_ttl_s=args.lease_ttl, durable=args.durable) as cluster:
            if args.dashboard:
                start_dashboard(cluster, args.dashboard_port)
            return submission.run(open_state(cluster.url), len(devices),
                                  Watcher(timings, cluster.check_alive, args.timeout, args.broker_timeout))
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
    p.add_argument("--precision", default="fp32", help=f"{' or '.join(PRECISIONS)}, for backends that support it "
                                                       "(fp16: torch and onnxruntime on a GPU; default fp32)")
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
    add_broker_timeout_arg(p)
    p.add_argument("--durable", action="store_true",
                   help="the embedded Redis writes its append-only file on every write (appendfsync always) instead "
                        "of every second: nothing to recover after a crash, at a cost (bench/chaos.py measures it)")
    p.add_argument("--write-bins", metavar="DIR",
                   help="first write the Ascend recipe's inputs from the tensor store: DIR/<stem>.bin (float32 "
                        "[3,S,S]), DIR.info and DIR_jpg.info as gen_dataset_info.py writes them, for Huawei's "
                        "benchmark tool")
    p.add_argument("--dashboard", action="store_true",
                   help=f"also start Flower on the embedded cluster and print its URL (login from {AUTH_ENV})")
    p.add_argument("--dashboard-port", type=int, help="Flower's port with --dashboard (default: a free one)")
    p.add_argument("--compare-with", metavar="RUN",
                   help="at the end, compare this job with a finished run (folder or job id, the reference): "
                        "`compare RUN JOB`, its folder beside the run folders")
    p.set_defaults(func=run)
