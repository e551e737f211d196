"""The Flower dashboard: a login is required on every path but /healthcheck, it listens on 127.0.0.1 unless told
otherwise; its HTTP API sees the workers and a finished job's tasks."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import cv2
import flower.app
import numpy as np
import pytest

from real_processes import get_json, http, run_cli, wait_for
from orchestrator.__main__ import main
from orchestrator.cluster import free_port
from orchestrator.flower_gate import logged_in

LOGIN = "ops:s3cret-pass"


def write_small_set(folder, n=8):
    (folder / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        cv2.imwrite(str(folder / "images" / f"{i + 1}.jpg"), np.full((40, 56, 3), 20 * i, dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i + 1}.jpg", "width": 56, "height": 40})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 20, 20], "area": 400.0,
                     "iscrowd": 0})
    ann = folder / "annotations.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}))
    return ann, folder / "images"


def get(url: str, login: str | None = LOGIN):
    """(HTTP status, parsed JSON or None); (0, None) while nothing listens."""
    return get_json(url, login)


def flower_paths() -> list[tuple[str, str]]:
    """(pattern, a path only it matches) for every URL pattern of Flower's app; the catch-all gets a made-up page."""
    paths = []
    for rule in flower.app.default_handlers:
        pattern = (rule.regex.pattern if hasattr(rule, "regex") else rule[0]).removesuffix("$")
        path = "/no-such-page" if pattern == ".*" else re.sub(r"\([^)]*\)", "x", pattern).replace("/?", "")
        assert re.fullmatch(pattern, path), (pattern, path)
        paths.append((pattern, path))
    return paths


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.parametrize("header, admitted", [
    ("Basic " + base64.b64encode(LOGIN.encode()).decode(), True),
    ("Basic " + base64.b64encode(b"ops:wrong").decode(), False),
    ("Basic " + base64.b64encode(b"ops:s3cret-pass-and-more").decode(), False),
    ("Basic " + base64.b64encode("ops:s3cret-päss".encode()).decode(), False),
    ("Bearer " + base64.b64encode(LOGIN.encode()).decode(), False),
    ("Basic not base64!", False),
    ("", False),
])
def test_the_gate_admits_only_a_configured_login(header, admitted):
    assert logged_in(header, ["someone:else", LOGIN]) is admitted


@pytest.mark.slow
def test_every_dashboard_path_but_the_healthcheck_needs_the_login(redis_url, processes, monkeypatch):
    monkeypatch.setenv("FLOWER_BASIC_AUTH", LOGIN)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dashboard = processes.spawn("dashboard", ["-m", "orchestrator", "dashboard", "--broker", redis_url,
                                              "--port", str(port)], redis_url)
    wait_for(lambda: http(base + "/healthcheck")[0] == 200, 60, what="Flower to answer its healthcheck")
    assert http(base + "/healthcheck")[2] == b"OK"
    (line,) = [x for x in processes.log(dashboard).splitlines() if x.startswith("dashboard: ")]
    assert f"http://127.0.0.1:{port}/ listening on 127.0.0.1 only; login required" in line, line
    if Path("/proc/net/tcp").exists():
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and no other interface

    paths = flower_paths()
    assert len(paths) >= 30 and ("/metrics", "/metrics") in paths and ("/healthcheck", "/healthcheck") in paths
    for pattern, path in paths:
        if pattern == "/healthcheck":
            continue
        for method in ("GET", "POST", "OPTIONS"):
            status, headers, body = http(base + path, method)
            assert (status, headers.get("WWW-Authenticate"), body) == (401, 'Basic realm="flower"',
                                                                       b"login required"), (method, path)
        assert http(base + path, login="ops:wrong")[0] == 401, path
        assert http(base + path, login=LOGIN)[0] != 401, path  # the login opens every one of them
    status, _, body = http(base + "/metrics", login=LOGIN)
    assert status == 200 and b"flower_" in body  # what /metrics told anyone before


def test_dashboard_refuses_to_start_without_a_login(capsys, monkeypatch):
    for value in (None, "no-colon", "user:"):
        if value is None:
            monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
        else:
            monkeypatch.setenv("FLOWER_BASIC_AUTH", value)
        assert main(["dashboard", "--broker", "redis://127.0.0.1:1/0"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.endswith("(FLOWER_BASIC_AUTH)"), err


@pytest.mark.slow
def test_flower_api_sees_the_workers_and_a_finished_jobs_tasks(shared_cluster, processes, tmp_path, monkeypatch):
    url = shared_cluster["url"]
    base = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("FLOWER_BASIC_AUTH", LOGIN)
    processes.spawn("dashboard", ["-m", "orchestrator", "dashboard", "--broker", url, "--address", "127.0.0.1",
                                  "--port", base.rsplit(":", 1)[1]], url)
    wait_for(lambda: get(base + "/api/workers", None)[0] == 401, 60, what="Flower to answer (and ask for a login)")
    assert get(base + "/api/workers", "ops:wrong")[0] == 401

    ann, img = write_small_set(tmp_path / "set")
    out = run_cli("submit", "--broker", url, "--annotations", str(ann), "--images", str(img), "--backend", "sim:10ms",
                  "--batch", "2", "--shard-size", "2", "--static-size", "320", "--run-dir", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-2000:]
    (report_path,) = (tmp_path / "runs").glob("*/report.json")
    job = json.loads(report_path.read_text())["job"]

    def finished_tasks():
        status, tasks = get(base + "/api/tasks")
        mine = [t for t in (tasks or {}).values() if job in str(t.get("kwargs"))]
        done = [t for t in mine if t["state"] == "SUCCESS"]
        names = [t["name"] for t in done]
        return done if names.count("evaluator.infer") == 4 and "evaluator.reduce" in names else None
    tasks = wait_for(finished_tasks, 30, 0.5, what="Flower to show the job's four infer tasks and its reducer")
    assert {t["name"] for t in tasks} == {"evaluator.preprocess", "evaluator.infer", "evaluator.reduce"}
    infer = [t for t in tasks if t["name"] == "evaluator.infer"]
    assert sorted(int(re.search(r"'shard': (\d+)", t["kwargs"]).group(1)) for t in infer) == [0, 1, 2, 3]
    # the routing ("device: any") is no longer shown: the result names the host/device that ran it, with images/s
    assert all("'batch': 2" in t["kwargs"] and "'device':" not in t["kwargs"] for t in infer)
    assert all(re.match(r"cpu:[01]-\d+@", t["worker"]) for t in infer)
    assert all(re.search(r"'device': '[^/']+/cpu:[01]'", t["result"]) and "'images_per_s':" in t["result"]
               for t in infer)

    status, workers = get(base + "/api/workers?refresh=1")
    assert status == 200
    names = set(workers)
    assert any(n.startswith("cpu:0-") for n in names) and any(n.startswith("cpu:1-") for n in names)
    assert any(n.startswith("cpu-pool-") for n in names)


@pytest.mark.slow
def test_embedded_submit_with_dashboard_prints_its_url_and_stops_it(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    ann, img = write_small_set(tmp_path / "set", 4)
    port = free_port()
    out = run_cli("submit", "--annotations", str(ann), "--images", str(img), "--backend", "groundtruth",
                  "--batch", "2",
                  "--devices", "cpu:0", "--static-size", "320", "--dashboard", "--dashboard-port", str(port),
                  "--run-dir", str(tmp_path / "runs"), timeout_s=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stderr.splitlines() if x.startswith("dashboard: "))
    assert f"http://127.0.0.1:{port}/" in line and "user evaluator, password " in line
    (log,) = (tmp_path / "runs").glob("*/logs/dashboard.log")
    assert f"Visit me at http://127.0.0.1:{port}" in log.read_text()
    assert get(f"http://127.0.0.1:{port}/api/workers")[0] == 0  # stopped with the cluster
