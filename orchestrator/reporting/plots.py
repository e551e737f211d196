"""The report's PNG plots (matplotlib's Figure API on the Agg canvas: no display, no pyplot state).

matplotlib comes with the `report` extra: it is imported when the first figure is drawn, and an
install without it writes the reports without plots.
"""
from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path

import numpy as np

from orchestrator.reporting.data import sweep_rows

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _figure(width: float = 8.0, height: float = 4.5):
    from matplotlib.figure import Figure  # lazily: the `report` extra, and half a second of import
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return str(path)


def _by_device(batches: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for b in sorted(batches, key=lambda b: b["t_start"]):
        out[f"{b['host']}/{b['device']}"].append(b)
    return dict(sorted(out.items()))


def fps_vs_batch(path: Path, rows: list[dict]) -> str:
    """Device FPS per device and end-to-end FPS against batch size (one point per job of a sweep)."""
    fig, ax = _figure()
    lines: dict[str, list] = defaultdict(list)
    e2e = {}
    single = len({r["device"] for r in rows}) <= 2  # one device: its line is the total
    for r in rows:
        if r["device_fps"] is not None and not (single and r["device"] == "all devices"):
            lines[r["device"]].append((r["batch"], r["device_fps"]))
        if r["e2e_fps"] is not None:
            e2e[r["batch"]] = r["e2e_fps"]
    for name, points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        style = "-o" if name != "all devices" else "-s"
        ax.plot(xs, ys, style, label=f"device FPS, {name}")
    if e2e:
        xs = sorted(e2e)
        ax.plot(xs, [e2e[x] for x in xs], "--^", color="black", label="end-to-end FPS")
    batches = sorted({r["batch"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_ylim(bottom=0)
    ax.set_title("FPS against batch size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def timeline(path: Path, batches: list[dict], t0: float, warmup: int) -> str:
    """One lane per device, one bar per device call; gaps are time the device waited (stalls, idle tails)."""
    lanes = _by_device(batches)
    fig, ax = _figure(10.0, 1.2 + 0.6 * max(1, len(lanes)))
    colours = ("tab:blue", "tab:cyan")
    for y, (name, recs) in enumerate(lanes.items()):
        spans = [(b["t_start"] - t0, b["t_end"] - b["t_start"]) for b in recs]
        fills = ["tab:orange" if b["seq"] < warmup else colours[b["shard"] % 2] for b in recs]
        ax.broken_barh(spans, (y - 0.35, 0.7), facecolors=fills, edgecolor="none")
    ax.set_yticks(range(len(lanes)), list(lanes))
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.set_xlabel("seconds since submit")
    ax.set_title("batches per device (orange: warm-up; alternating blue: shards; gaps: device idle)")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def latency_histogram(path: Path, batches: list[dict], warmup: int) -> str:
    """Batch latency (device call) per device, warm-up batches left out, with p50 and p99 marked."""
    fig, ax = _figure()
    for name, recs in _by_device(batches).items():
        ms = np.asarray([(b["t_end"] - b["t_start"]) * 1000.0 for b in recs if b["seq"] >= warmup])
        if not ms.size:
            continue
        line = ax.hist(ms, bins=min(40, max(5, ms.size // 2)), histtype="step", label=name)[2][0]
        for q, style in ((50, "--"), (99, ":")):
            ax.axvline(np.percentile(ms, q), linestyle=style, color=line.get_edgecolor())
    ax.set_xlabel("batch latency, ms (dashed p50, dotted p99)")
    ax.set_ylabel("batches")
    ax.set_title("batch latency after warm-up")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, path)


def write_plots(folder: Path, report: dict, batches: list[dict] | None) -> dict[str, str]:
    """The job's plots under `folder`; returns name -> path relative to the run folder ({} without matplotlib)."""
    if not HAVE_MATPLOTLIB:
        return {}
    folder = Path(folder)
    warmup = int(report["params"].get("warmup_batches", 0))
    rows = (report.get("sweep") or {}).get("rows") or sweep_rows([report])
    out = {"fps_vs_batch": fps_vs_batch(folder / "fps_vs_batch.png", rows)}
    if batches:
        out["timeline"] = timeline(folder / "timeline.png", batches, report["timestamps"]["submit"], warmup)
        out["latency_histogram"] = latency_histogram(folder / "latency_histogram.png", batches, warmup)
    return {name: str(Path(p).relative_to(folder.parent)) for name, p in out.items()}


def write_sweep_plots(folder: Path, rows: list[dict]) -> dict[str, str]:
    """The sweep's FPS-against-batch plot under `folder`; name -> path relative to the sweep's run folder."""
    if not HAVE_MATPLOTLIB:
        return {}
    path = fps_vs_batch(Path(folder) / "fps_vs_batch.png", rows)
    return {"fps_vs_batch": str(Path(path).relative_to(Path(folder).parent))}
