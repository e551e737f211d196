"""Batch sweeps: one job per batch size, one after the other, over the same preprocessed tensors."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from commandline import UsageError
from orchestrator.cli import positive_int
from orchestrator.jobs import Watcher, run_job
from orchestrator.reporting.writer import publish_sweep, rewrite_job
from tasks.params import JobParams
from tasks.state import JobState


def parse_batches(text: str) -> list[int]:
    """`8` or `1,4,8,16` -> [8] or [1, 4, 8, 16]; one-line errors naming --batch."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise UsageError(f"--batch takes a batch size or a list like 1,4,8,16, got {text!r} (--batch)")
    for b in values:
        positive_int("--batch", b)
    if len(set(values)) != len(values):
        raise UsageError(f"a batch size is listed twice: {text} (--batch)")
    return values


def model_for(template: str, batch: int) -> str:
    """`models/dcn_bs{batch}.om` -> the static export made for this batch size (a dynamic model: the same file)."""
    return template.replace("{batch}", str(batch))


def batch_models(model: str | None, batches: list[int]) -> dict[int, str]:
    """The model file of each batch size, when `--model` names one per batch size (each must exist); else {}."""
    if not model or "{batch}" not in model:
        return {}
    for b in batches:
        if not Path(model_for(model, b)).is_file():
            raise UsageError(f"model file not found for batch {b} ({model_for(model, b)})")
    return {b: str(Path(model_for(model, b)).resolve()) for b in batches}


def sweep_jobs(params: JobParams, batches: list[int], models: dict[int, str]) -> list[JobParams]:
    """One job per batch size (`JOB-bN`, its own run folder beside the sweep's), each with its batch's model."""
    run_root = Path(params.run_dir).parent
    return [replace(params, job_id=f"{params.job_id}-b{b}", batch=b, sweep=params.job_id,
                    model=models.get(b, params.model), run_dir=str(run_root / f"{params.job_id}-b{b}"))
            for b in batches]


def follow_sweep(state: JobState, jobs: list[JobParams], images: list[dict], n_devices: int, watcher: Watcher,
                 checkpoint: str | None = None) -> int:
    """The jobs one after the other; only the first enqueues preprocessing (the store is warm after it). Then
    every job's report gets the whole sweep, and the sweep's own folder its table and plot."""
    code = 0
    for i, params in enumerate(jobs):
        code = max(code, run_job(state, params, images, n_devices, watcher, checkpoint, preprocess_first=i == 0))
        if state.report(params.job_id) is None:
            break  # failed or cancelled: the rest would fail the same way
    reports = [rewrite_job(state, p.job_id, p.run_dir, with_results=False) for p in jobs
               if state.report(p.job_id) is not None]
    if reports:
        sweep_id = jobs[0].sweep
        sweep = publish_sweep(Path(jobs[0].run_dir).parent / sweep_id, sweep_id, reports)
        code = max(code, 0 if sweep["status"] == "done" and len(reports) == len(jobs) else 1)
    return code
