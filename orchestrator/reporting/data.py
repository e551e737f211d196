"""Every number report.md and the plots show, put into report.json first (the markdown only formats them).

`collect` reads what only the broker knows (preprocessing counts, sibling jobs of a sweep);
`derive` and `sweep_summary` are pure, so `report JOB` can rebuild report.md and the plots from the run
folder alone.
"""
from __future__ import annotations

from urllib.parse import quote

from tasks.metrics import MIN_BATCHES, MIN_DEVICE_S, MIN_IMAGES, VALIDITY_RULE
from tasks.reduce import union_results
from tasks.state import JobState

OVERALL_RULE = ("the job is valid when every image id was counted exactly once and every device's FPS is valid; "
                "end-to-end FPS counts the wall time from submit to the reducer's start")


def preprocessing(summary: dict) -> dict:
    """Where the job's images were preprocessed: the CPU pool ahead of time, or a device worker on a store miss.

    `summary` is the job hash: the result write counts the images of each shard result and, of those,
    the ones its device read from the store.
    """
    answered = int(summary.get("images_done", 0))
    device_hits = int(summary.get("device_store_hits", 0))
    out = {
        "pool_tasks": int(summary.get("preprocess_tasks", summary.get("n_shards", 0))),
        "pool_preprocessed": int(summary.get("pool_preprocessed", 0)),
        "pool_store_hits": int(summary.get("pool_store_hits", 0)),
        "device_preprocessed": answered - device_hits,
        "device_store_hits": device_hits,
    }
    out["preprocessed"] = out["pool_preprocessed"] + out["device_preprocessed"]
    return out


def sweep_reports(state: JobState, sweep: str) -> list[dict]:
    """The finished jobs of a sweep, by batch size."""
    reports = []
    for job_id in state.job_ids():
        try:
            in_sweep = state.params(job_id).sweep == sweep
        except KeyError:  # listed, but its keys are gone
            continue
        if in_sweep:
            report = state.report(job_id)
            if report is not None:
                report.setdefault("preprocessing", preprocessing(state.summary(job_id)))
                reports.append(report)
    return sorted(reports, key=lambda r: r["params"]["batch"])


def sweep_rows(reports: list[dict]) -> list[dict]:
    """The recipe's table: per batch size and device, box AP, device FPS, end-to-end FPS, p50/p99 latency."""
    rows = []
    for r in reports:
        m, batch, ap = r["metrics"], r["params"]["batch"], r["ap"]["stats"]["AP"]
        pre = (r.get("preprocessing") or {}).get("preprocessed")
        for name, d in m["devices"].items():
            rows.append({"batch": batch, "job": r["job"], "device": name, "ap": ap, "device_fps": d["fps"],
                         "e2e_fps": m["e2e_fps"], "p50_ms": d["latency_ms"]["p50"], "p99_ms": d["latency_ms"]["p99"],
                         "images": d["images"], "preprocessed": pre, "valid": d["valid"]})
        rows.append({"batch": batch, "job": r["job"], "device": "all devices", "ap": ap,
                     "device_fps": m["device_fps_total"], "e2e_fps": m["e2e_fps"], "p50_ms": None, "p99_ms": None,
                     "images": m["images"], "preprocessed": pre, "valid": m["valid"] and r["coverage"]["ok"]})
    return rows


def dashboard_links(dashboard: dict | None, job_id: str, t_submit: float) -> dict | None:
    """Where the dashboard that watched the whole job shows its tasks; None when none ran since the job's submit.

    Flower keeps tasks in memory and its Tasks page takes no search from its URL (only state, worker and name):
    the page and the job id to type into its search box, and the API's search, which takes the id in the URL.
    """
    if not dashboard or float(dashboard.get("since", t_submit + 1)) > t_submit:
        return None
    url = dashboard["url"].rstrip("/") + "/"
    return {"url": url, "tasks": f"{url}tasks", "search": job_id, "api": f"{url}api/tasks?search={quote(job_id)}"}


def collect(state: JobState, job_id: str, with_results: bool = True) -> tuple[dict, list[dict], list[dict] | None]:
    """(report with broker-only facts added, batch records, COCO results or None without `with_results`)
    of a finished job."""
    report = state.report(job_id)
    summary = state.summary(job_id)
    report["preprocessing"] = preprocessing(summary)
    report["resumes"] = int(summary.get("resumes", 0))
    links = dashboard_links(state.dashboard(), job_id, float(summary.get("t_submit", 0)))
    if links:
        report["dashboard"] = links
    sweep = report["params"].get("sweep")
    if sweep:
        report["sweep"] = {"id": sweep, "rows": sweep_rows(sweep_reports(state, sweep))}
    return report, state.batches(job_id), union_results(state.results(job_id)) if with_results else None


def validity(report: dict) -> dict:
    """A verdict per device and overall, each with the rule and what fell short."""
    devices = {}
    for name, d in report["metrics"]["devices"].items():
        checks = [(d["measured_batches"] >= MIN_BATCHES,
                   f"{d['measured_batches']} batches after warm-up, needs {MIN_BATCHES}"),
                  (d["measured_images"] >= MIN_IMAGES,
                   f"{d['measured_images']} images after warm-up, needs {MIN_IMAGES}"),
                  (d["device_s"] >= MIN_DEVICE_S,
                   f"{d['device_s']:.1f} s of device calls after warm-up, needs {MIN_DEVICE_S:g}")]
        devices[name] = {"valid": all(ok for ok, _ in checks), "short": [why for ok, why in checks if not ok]}
    short = [f"{name}: {'; '.join(v['short'])}" for name, v in devices.items() if not v["valid"]]
    if not devices:
        short.append("no device ran a batch")
    if not report["coverage"]["ok"]:
        short.append("coverage: " + "; ".join(report["coverage"]["errors"]))
    return {"rule": VALIDITY_RULE, "overall_rule": OVERALL_RULE, "devices": devices,
            "overall": {"valid": not short, "short": short}}


def fps_table(report: dict) -> list[dict]:
    m = report["metrics"]
    rows = [{"device": name, "images": d["images"], "batches": d["batches"], "shards": len(d["shards"]),
             "device_fps": d["fps"], "fps_with_warmup": d.get("fps_with_warmup"),
             "p50_ms": d["latency_ms"]["p50"], "p90_ms": d["latency_ms"]["p90"], "p99_ms": d["latency_ms"]["p99"],
             "valid": d["valid"]} for name, d in m["devices"].items()]
    rows.append({"device": "all devices", "images": sum(d["images"] for d in m["devices"].values()),
                 "batches": sum(d["batches"] for d in m["devices"].values()),
                 "shards": sum(len(d["shards"]) for d in m["devices"].values()),
                 "device_fps": m["device_fps_total"], "fps_with_warmup": None,
                 "p50_ms": None, "p90_ms": None, "p99_ms": None, "valid": m["valid"]})
    return rows


def attestation(report: dict) -> list[dict]:
    """Which devices were attested idle before their worker took them."""
    return [{"device": f"{w['host']}/{w['device']}", "pid": w["pid"], "idle": w["attest"]["idle"],
             "detail": w["attest"]["detail"]} for w in report.get("workers", [])]


def hosts(report: dict) -> list[dict]:
    """Host and device ids with the runtime versions each worker reported."""
    out = []
    for w in report.get("workers", []):
        v = w.get("versions") or {}
        pk = v.get("packages") or {}
        out.append({"device": f"{w['host']}/{w['device']}", "pid": w["pid"], "identity": w.get("identity"),
                    "backend": w["backend"], "onnxruntime": pk.get("onnxruntime-gpu") or pk.get("onnxruntime"),
                    "torch": pk.get("torch"), "cann": (v.get("cann") or {}).get("toolkit"),
                    "npu_driver": (v.get("cann") or {}).get("driver"), "platform": v.get("platform")})
    return out


def derive(report: dict) -> dict:
    """Add the tables' rows, the verdicts, the attestation and the host list (idempotent)."""
    report["fps_table"] = fps_table(report)
    report["validity"] = validity(report)
    report["attestation"] = attestation(report)
    report.setdefault("manifest", {})["hosts"] = hosts(report)
    return report


def sweep_summary(sweep_id: str, reports: list[dict]) -> dict:
    """sweep.json: the table's rows, where preprocessing ran, and whether AP was the same at every batch size."""
    pre = [{"job": r["job"], "batch": r["params"]["batch"], **(r.get("preprocessing") or {})} for r in reports]
    aps = {r["params"]["batch"]: r["ap"]["stats"]["AP"] for r in reports}
    return {
        "id": sweep_id,
        "jobs": [r["job"] for r in reports],
        "batches": [r["params"]["batch"] for r in reports],
        "rows": sweep_rows(reports),
        "preprocessing": pre,
        # once: only the first job preprocessed anything; every later job read every image from the store
        "preprocessed_once": all(p.get("preprocessed", 0) == 0 for p in pre[1:]),
        "ap_by_batch": {str(b): ap for b, ap in aps.items()},
        "ap_equal": len(set(aps.values())) <= 1,
        "status": "done" if reports and all(r["status"] == "done" for r in reports) else "failed",
    }
