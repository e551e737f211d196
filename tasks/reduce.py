"""The reducer: coverage check (every image exactly once), COCOeval once on the union, the report."""
from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from contextlib import contextmanager

from evaluation.coco_eval import DEFAULT_EVALUATOR, evaluate
from evaluation.streaming import StreamingCocoEval
from tasks.metrics import job_metrics
from tasks.outage import BROKER_ERRORS
from tasks.params import JobParams
from tasks.shards import read_annotation
from tasks.state import JobState

MAX_IDS_IN_LINE = 20


def _ids_line(ids: list[int]) -> str:
    shown = ", ".join(str(i) for i in ids[:MAX_IDS_IN_LINE])
    return shown + (f", ... ({len(ids) - MAX_IDS_IN_LINE} more)" if len(ids) > MAX_IDS_IN_LINE else "")


def check_coverage(expected_ids: list[int], shards: dict[int, list[dict]], results: dict[int, dict]) -> dict:
    """Count every image id over the shard results (answered or unreadable) against the annotation file."""
    seen: Counter = Counter()
    unreadable: dict[int, str] = {}
    for payload in results.values():
        seen.update(int(i) for i in payload["image_ids"])
        for i, msg in payload.get("unreadable", {}).items():
            seen[int(i)] += 1
            unreadable[int(i)] = msg
    expected = Counter(expected_ids)
    missing = sorted(i for i in expected if seen[i] == 0)
    duplicated = sorted(i for i in set(seen) | set(expected) if seen[i] > 1 or expected[i] > 1)
    unexpected = sorted(i for i in seen if i not in expected)
    without_result = sorted(s for s in shards if s not in results)
    errors = []
    if missing:
        where = f"; shards without a result: {', '.join(map(str, without_result))}" if without_result else ""
        errors.append(f"missing image ids ({len(missing)}): {_ids_line(missing)}{where}")
    if duplicated:
        errors.append(f"duplicated image ids ({len(duplicated)}): {_ids_line(duplicated)}")
    if unexpected:
        errors.append(f"image ids not in the annotation file ({len(unexpected)}): {_ids_line(unexpected)}")
    return {
        "expected": len(expected_ids), "counted": sum(seen.values()),
        "missing": missing, "duplicated": duplicated, "unexpected": unexpected,
        "shards_without_result": without_result,
        "unreadable": {str(i): unreadable[i] for i in sorted(unreadable)},
        "ok": not errors, "errors": errors,
    }


def union_results(results: dict[int, dict]) -> list[dict]:
    """Detections of every shard, each image taken once (the first shard that answered it)."""
    taken: set[int] = set()
    union: list[dict] = []
    for shard in sorted(results):
        payload = results[shard]
        fresh = {int(i) for i in payload["image_ids"]} - taken
        union.extend(r for r in payload["results"] if int(r["image_id"]) in fresh)
        taken |= fresh
    return union


@contextmanager
def failing_job(state: JobState, job_id: str):
    """Any error inside marks the job failed with a one-line reason, then propagates: a report must say
    why it has no AP, never hang the job. A broker outage fails nothing: the reduce is done again (the
    reapers re-enqueue a job's lost reduce)."""
    try:
        yield
    except BROKER_ERRORS:
        raise
    except Exception as exc:
        state.fail(job_id, f"reducer: {exc.__class__.__name__}: {exc}")
        raise


def shard_evaluator(annotation: str | dict, evaluator: str) -> StreamingCocoEval | None:
    """The evaluator that takes shard results as they come (faster-coco-eval: its C++ per-image step, then
    pycocotools' accumulation), or None for pycocotools, the reference, which runs once on the union."""
    return StreamingCocoEval(annotation) if evaluator == DEFAULT_EVALUATOR else None


def add_shard(evaluation: StreamingCocoEval, payload: dict) -> None:
    """One shard result into the evaluation; its unreadable images count as images without detections."""
    evaluation.add([int(i) for i in payload["image_ids"]] + [int(i) for i in payload.get("unreadable", {})],
                   payload["results"])


def reduce_job(state: JobState, job_id: str, evaluator: str | None = None) -> dict:
    """Read every shard result, check coverage, evaluate, save the report and finish the job (one go)."""
    params = state.params(job_id)
    evaluator = evaluator or params.coco_eval
    t_reduce_start = float(state.summary(job_id).get("t_reduce_start") or time.time())
    state.set_status(job_id, "reducing", t_reduce_start=t_reduce_start)
    with failing_job(state, job_id):
        annotation, images = read_annotation(params.annotation)
        results = state.results(job_id)
        shards = state.all_shards(job_id)
        evaluation = shard_evaluator(annotation, evaluator)
        if evaluation is not None:
            for shard in sorted(results):  # the lowest shard first, as union_results takes them
                add_shard(evaluation, results[shard])
    return finish_job(state, job_id, params, [im["id"] for im in images], shards, results, t_reduce_start,
                      evaluator, mode="one go", annotation=annotation, evaluation=evaluation)


def finish_job(state: JobState, job_id: str, params: JobParams, expected_ids: list[int],
               shards: dict[int, list[dict]], results: dict[int, dict], t_reduce_start: float,
               evaluator: str | None = None, mode: str = "streaming", annotation: dict | None = None,
               evaluation: StreamingCocoEval | None = None) -> dict:
    """Coverage, COCOeval, metrics, the report; the job ends done (or failed on a coverage error).

    The caller has set the job reducing. `mode` says how the results were read: "streaming" (as they
    were written) or "one go" (all at the end). `annotation`: the annotation file already parsed, if it was.
    `evaluation`: the shard results already added to a StreamingCocoEval (then only its accumulation is left);
    without it COCOeval runs once on the union of `results`.
    """
    summary = state.summary(job_id)
    evaluator = evaluator or params.coco_eval
    t0 = time.time()
    with failing_job(state, job_id):
        coverage = check_coverage(expected_ids, shards, results)
        t_coverage = time.time()
        if evaluation is not None:
            ap = {**evaluation.finish(), "evaluator": evaluator, "per_image": "as each shard landed"
                  if mode == "streaming" else "after the last shard"}
        else:
            ap = evaluate(annotation or params.annotation, union_results(results), evaluator)
    t_ap = time.time()
    metrics = job_metrics(state.batches(job_id), params.warmup_batches, len(expected_ids),
                          float(summary["t_submit"]), t_reduce_start)
    t_done = time.time()
    status = "done" if coverage["ok"] else "failed"
    report = {
        "job": job_id,
        "status": status,
        "params": params.to_dict(),
        "coverage": coverage,
        "errors": coverage["errors"],
        "ap": ap,
        "metrics": metrics,
        "workers": _workers(state, metrics),
        "manifest": json.loads(summary.get("manifest") or "{}"),
        "reducer": {"mode": mode, "host": socket.gethostname(), "pid": os.getpid(),
                    "seconds": {"coverage": t_coverage - t0, "ap": t_ap - t_coverage, "metrics": t_done - t_ap}},
        "timestamps": {"submit": float(summary["t_submit"]), "reduce_start": t_reduce_start,
                       "done": t_done, "evaluate_s": t_done - t_reduce_start},
    }
    state.save_report(job_id, report)
    fields = {"t_done": t_done, "ap": ap["stats"]["AP"]}
    if not coverage["ok"]:
        fields["error"] = "; ".join(coverage["errors"])
    state.set_status(job_id, status, **fields)
    return report


def _workers(state: JobState, metrics: dict) -> list[dict]:
    """The registered device workers that ran batches of this job (attestation, backend facts)."""
    pids = {(name, pid) for name, d in metrics["devices"].items() for pid in d["workers"]}
    out = [w for w in state.workers() if (f"{w['host']}/{w['device']}", w["pid"]) in pids]
    return sorted(out, key=lambda w: (w["host"], w["device"], w["pid"]))
