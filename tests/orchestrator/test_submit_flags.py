"""One real `submit` on a terminal: the progress bar, --no-store, --coco-eval, p90, the manifest's commit and versions."""
from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from importlib import metadata

import pytest

from real_processes import REPO
from orchestrator.generated_set import write_set

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(args: list[str], timeout_s: float = 240) -> tuple[int, str, str]:
    """`python -m orchestrator ARGS` with stderr on a pty (as at a terminal), stdout piped: (exit code, stdout,
    everything the terminal showed, escape sequences removed)."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "xterm-256color", "COLUMNS": "160"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, cwd=REPO, env=env, text=True)
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: every writer of the terminal is gone
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = proc.communicate(timeout=timeout_s)[0]
    return proc.returncode, out, ANSI.sub("", shown.decode(errors="replace"))


@pytest.mark.slow
def test_submit_on_a_terminal_with_no_store_and_pycocotools(shared_cluster, tmp_path):
    ann, img = write_set(tmp_path / "set", 24, seed=3, images=True)
    runs = tmp_path / "runs"
    code, out, shown = run_on_a_terminal(
        ["submit", "--broker", shared_cluster["url"], "--annotations", str(ann), "--images", str(img),
         "--backend", "sim:200ms,answers=detector", "--batch", "2", "--shard-size", "4", "--static-size", "320",
         "--warmup", "1", "--no-store", "--coco-eval", "pycocotools", "--run-dir", str(runs), "--timeout", "200"])
    assert code == 0, shown[-3000:]
    (report_path,) = runs.glob("*/report.json")
    report = json.loads(report_path.read_text())

    # the bar, redrawn in place while the job ran: images, images/s, ETA, shards done
    frames = [f for f in re.split(r"[\r\n]", shown) if " images " in f and "img/s" in f]
    assert len(frames) >= 3, shown[-3000:]
    assert any(re.search(r"\b\d+/24 images +\d+\.\d img/s ETA \d+:\d\d:\d\d", f) for f in frames), frames
    assert any(re.search(r"\b[1-5]/6 shards, running", f) for f in frames), frames  # a frame mid-job
    assert re.search(r"24/24 images .* 6/6 shards, done", frames[-1]), frames[-1]

    # --no-store: no store folder, every image preprocessed by the device workers, none read from a store
    assert report["params"]["store"] == "" and not (runs / "store").exists()
    pre = report["preprocessing"]
    assert (pre["device_preprocessed"], pre["device_store_hits"], pre["pool_store_hits"]) == (24, 0, 0)
    # --coco-eval through submit
    assert report["params"]["coco_eval"] == report["ap"]["evaluator"] == "pycocotools"
    assert 0 < report["ap"]["stats"]["AP"] < 1
    # p90 on stdout: each device's row carries its p50, p90 and p99 from report.json
    assert "p90 ms" in out
    for name, d in report["metrics"]["devices"].items():
        lat = d["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p99"]
        row = next(line for line in out.splitlines() if name in line and "%.1f" % lat["p90"] in line)
        assert "%.1f" % lat["p50"] in row and "%.1f" % lat["p99"] in row
    # the manifest: this checkout's commit and the installed versions
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    assert report["manifest"]["git_commit"] == head
    for package in ("celery", "redis", "numpy", "pycocotools"):
        assert report["manifest"]["packages"][package] == metadata.version(package)
