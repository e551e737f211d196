"""The report on the terminal: the job's table (box AP, device FPS, latency, end-to-end FPS) and the sweep's."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from evaluation.coco_eval import STAT_NAMES

SAMPLE_BANNER = ("BUILT-IN SAMPLE: no COCO data was found, so this ran the generated selftest set with {what}. "
                 "Its AP means nothing. For a real evaluation put val2017 under data/coco and a checkpoint "
                 "under checkpoints/ (or pass --annotations, --images, --model).")


def stdout_console() -> Console:
    """Plain text when not a terminal, wide enough for the tables."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, record=True, soft_wrap=True)


def _num(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def sample_banner(params: dict) -> str:
    what = ("a random-weights model (backend torch)" if params["backend"] == "torch"
            else f"the {params['backend']} backend")
    return SAMPLE_BANNER.format(what=what)


def render(report: dict, console: Console) -> None:
    """Print the report: what ran, box AP, the FPS table, validity, idle attestation, coverage."""
    _what_ran(report, console)
    _box_ap(report["ap"]["stats"], console)
    _throughput(report, console)
    _checks(report, console)


def _what_ran(report: dict, console: Console) -> None:
    p = report["params"]
    if p.get("sample"):
        console.print(f"[bold red]{sample_banner(p)}[/]")
    size = f"{p['size_mode']} ({p['static_size']})" if p["size_mode"] == "static" else p["size_mode"]
    model = f"  model {p['model']}" if p.get("model") else ""
    console.print(f"job {report['job']}  status {report['status']}  backend {p['backend']}{model}  "
                  f"batch {p['batch']}  size mode {size}  images {report['coverage']['expected']}  "
                  f"devices {len(report['metrics']['devices'])}")


def _box_ap(stats: dict, console: Console) -> None:
    console.print(f"box AP {stats['AP']:.3f}")
    ap = Table(title="box AP (COCOeval bbox, all images)", title_justify="left")
    for name in STAT_NAMES:
        ap.add_column(name, justify="right")
    ap.add_row(*(f"{stats[n]:.3f}" for n in STAT_NAMES))
    console.print(ap)


def _throughput(report: dict, console: Console) -> None:
    m = report["metrics"]
    fps = Table(title=f"device FPS and batch latency (device call only, after {report['params']['warmup_batches']} "
                      f"warm-up batches per worker)", title_justify="left")
    for col in ("device", "images", "batches", "shards", "device FPS", "p50 ms", "p90 ms", "p99 ms", "valid"):
        fps.add_column(col, justify="left" if col == "device" else "right")
    for name, d in m["devices"].items():
        lat = d["latency_ms"]
        device_fps = _num(d["fps"], ".2f") if d["fps"] else f"({_num(d.get('fps_with_warmup'), '.2f')})"
        fps.add_row(name, str(d["images"]), str(d["batches"]), str(len(d["shards"])), device_fps,
                    _num(lat["p50"]), _num(lat["p90"]), _num(lat["p99"]), "yes" if d["valid"] else "no")
    fps.add_row("all devices", str(sum(d["images"] for d in m["devices"].values())), "", "",
                _num(m["device_fps_total"], ".2f"), "", "", "", "yes" if m["valid"] else "no")
    console.print(fps)
    console.print(f"end-to-end FPS {_num(m['e2e_fps'], '.2f')}: {m['images']} images in {m['wall_s']:.1f} s "
                  f"(submit to reducer start); COCOeval {report['timestamps']['evaluate_s']:.1f} s")
    if any(not d["fps"] for d in m["devices"].values()):
        console.print("(FPS in brackets: no batch after warm-up on that device, so warm-up is included)")
    if m.get("tensor_wait_note"):
        console.print(m["tensor_wait_note"])


def _checks(report: dict, console: Console) -> None:
    console.print(f"validity: {report['metrics']['validity_rule']}")
    for name, v in (report.get("validity") or {}).get("devices", {}).items():
        if not v["valid"]:
            console.print(f"  {name} not valid: {'; '.join(v['short'])}", markup=False)
    for w in report.get("workers", []):
        idle = {True: "idle", False: "NOT idle", None: "not attested"}[w["attest"]["idle"]]
        console.print(f"worker {w['host']}/{w['device']} pid {w['pid']}: {w['backend'].get('backend')}, "
                      f"{idle} before start ({w['attest']['detail']})", markup=False)
    cov = report["coverage"]
    if cov["unreadable"]:
        console.print(f"unreadable images ({len(cov['unreadable'])}), counted once, no detections:")
        for image_id, why in cov["unreadable"].items():
            console.print(f"  {image_id}: {why}", markup=False)
    for err in report["errors"]:
        console.print(f"[bold red]error:[/] {err}")
    if not report["errors"]:
        console.print(f"coverage: every one of the {cov['expected']} image ids counted exactly once")


def render_sweep(sweep: dict, console: Console) -> None:
    """The recipe's table: per batch size and device, box AP, device FPS, end-to-end FPS, latency."""
    t = Table(title=f"batch sweep {sweep['id']}", title_justify="left")
    for col in ("batch", "device", "box AP", "device FPS", "end-to-end FPS", "p50 ms", "p99 ms", "preprocessed",
                "valid"):
        t.add_column(col, justify="left" if col == "device" else "right")
    for r in sweep["rows"]:
        t.add_row(str(r["batch"]), r["device"], _num(r["ap"], ".3f"), _num(r["device_fps"], ".2f"),
                  _num(r["e2e_fps"], ".2f"), _num(r["p50_ms"], ".1f"), _num(r["p99_ms"], ".1f"),
                  _num(r["preprocessed"], "d"), "yes" if r["valid"] else "no")
    console.print(t)
    console.print("preprocessing ran once (the later jobs read every image from the tensor store)"
                  if sweep["preprocessed_once"] else "preprocessing ran in more than one job of the sweep")
    console.print(f"box AP {'equal' if sweep['ap_equal'] else 'DIFFERENT'} at every batch size: "
                  + ", ".join(f"batch {b} {ap:.3f}" for b, ap in sweep["ap_by_batch"].items()))
