"""docker-compose.yml: valid for docker-compose, shaped as the design says, and its worker commands complete a job."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.cluster import free_port
from real_processes import REPO
from tasks.state import answers
from tls_broker import launch, make_certificates
from workers import npu_host

COMPOSE = REPO / "docker-compose.yml"
ENV = {"REDIS_PASSWORD": "compose-test-pw", "FLOWER_BASIC_AUTH": "ops:secret", "EVALUATOR_HOST": "rack7"}
NPU_NODES = {"/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"}


def interpolate(text: str, env: dict) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} (what this file uses)."""
    def value(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name}: {arg}")
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, text)


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), ENV))["services"]


def test_docker_compose_validates_the_file():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose; .ci/run does)")
    env = {"PATH": "/usr/bin:/bin", **ENV}
    ok = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    env.pop("REDIS_PASSWORD")
    refused = subprocess.run([exe, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=env,
                             cwd=REPO)
    assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr


def test_redis_flower_and_device_services_are_configured_as_designed(services):
    redis = services["redis"]
    assert {"--requirepass", "noeviction", "--appendonly"} <= set(" ".join(redis["command"]).split())
    assert "redis-data:/data" in redis["volumes"]
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == ENV["FLOWER_BASIC_AUTH"]
    assert flower["command"].startswith("python -m orchestrator dashboard")
    assert services["preprocess"]["command"].split()[3] == "--preprocess"
    assert services["reducer"]["command"].split()[3] == "--reduce"
    npus = {name: s for name, s in services.items() if s.get("profiles") == ["npu"]}
    assert len(npus) >= 4
    for name, s in npus.items():
        n = int(name[3:])
        assert set(s["devices"]) == NPU_NODES | {f"/dev/davinci{n}"}
        assert f"--device npu:{n}" in s["command"]
        assert s["environment"]["EVALUATOR_NPU_VISIBLE"] == str(n)  # the one device its container sees is ACL 0
        assert s["group_add"] == ["0"]  # MODELS_GID: the om's group, so ais_bench loads it in place
        mounts = {v.split(":")[0]: v for v in s["volumes"]}
        for path in ("/usr/local/Ascend/driver", "/usr/local/bin/npu-smi", "/usr/local/dcmi"):
            assert mounts[path].endswith(":ro"), path
    gpus = [s for s in services.values() if s.get("profiles") == ["gpu"]]
    cards = [d["device_ids"] for s in gpus for d in s["deploy"]["resources"]["reservations"]["devices"]]
    assert len(gpus) >= 2 and all(len(c) == 1 for c in cards) and len({c[0] for c in cards}) == len(cards)
    assert any(s.get("profiles") == ["cpu"] and "--device cpu:" in s["command"] for s in services.values())
    hosts = [s["hostname"] for s in services.values() if "--device" in str(s.get("command"))]
    assert len(set(hosts)) == len(hosts) and all(h.startswith("rack7-") for h in hosts)  # unique lease keys


def redis_script(scheme: str, tls: Path, data: Path, port: int) -> str:
    """The redis service's shell command as compose runs it (`$$` is `$`), its container paths and port made local."""
    services = yaml.safe_load(interpolate(COMPOSE.read_text(), {**ENV, "REDIS_SCHEME": scheme}))["services"]
    shell, flag, script = services["redis"]["command"]
    assert (shell, flag) == ("sh", "-c")
    assert "--port" in script and "6379" in script  # never the default port on a test machine
    return script.replace("$$", "$").replace("/tls/", f"{tls}/").replace("/data", str(data)).replace("6379", str(port))


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_the_compose_redis_speaks_tls_alone_when_redis_scheme_is_rediss(scheme, tmp_path):
    """The service's own command, run with a stand-in for the image's entrypoint (which only changes the user),
    on loopback: TLS alone with REDIS_SCHEME=rediss, plain otherwise; every app service finds it the same way."""
    services = yaml.safe_load(interpolate(COMPOSE.read_text(), {**ENV, "REDIS_SCHEME": scheme}))["services"]
    apps = {name: s for name, s in services.items() if "EVALUATOR_BROKER" in s.get("environment", {})}
    assert len(apps) >= 10 and all(s["environment"]["EVALUATOR_BROKER"].startswith(f"{scheme}://") and
                                   s["environment"]["EVALUATOR_TLS_CA"] == "/tls/ca.crt" and
                                   "./tls:/tls:ro" in s["volumes"] for s in apps.values())
    assert any(a.startswith(f"{scheme}://") for a in services["submit"]["entrypoint"])
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    certs = make_certificates(tmp_path / "tls")
    (tmp_path / "data").mkdir()
    stand_in = tmp_path / "bin" / "docker-entrypoint.sh"
    stand_in.parent.mkdir()
    stand_in.write_text('#!/bin/sh\nexec "$@" --bind 127.0.0.1\n')
    stand_in.chmod(0o755)
    port = free_port()
    env = {"PATH": f"{stand_in.parent}:{os.environ['PATH']}", **services["redis"]["environment"]}
    password = ENV["REDIS_PASSWORD"]
    server = launch(certs, ["sh", "-c", redis_script(scheme, certs, tmp_path / "data", port)], port, env, scheme,
                    password)
    try:
        tls_url, plain_url = (f"{s}://:{password}@127.0.0.1:{port}/0" for s in ("rediss", "redis"))
        assert answers(tls_url, tls=server.tls) is (scheme == "rediss")
        assert answers(plain_url) is (scheme == "redis")
        healthcheck = services["redis"]["healthcheck"]["test"][1].replace("$$", "$").replace("/tls/", f"{certs}/")
        check = subprocess.run(["sh", "-c", healthcheck.replace("redis-cli", f"redis-cli -p {port}", 1)],
                               capture_output=True, text=True, env=env, timeout=30)
        assert check.stdout.strip() == "PONG", check.stderr
    finally:
        server.stop()


def test_every_npu_service_maps_its_device_to_acl_device_0(services, tmp_path, monkeypatch):
    """Each npuN container sees one device, which ACL numbers 0: read from its /dev, or from its environment."""
    npus = {name: s for name, s in services.items() if s.get("profiles") == ["npu"]}
    for name, s in npus.items():
        n = int(re.search(r"--device npu:(\d+)", s["command"]).group(1))
        container_dev = tmp_path / name
        container_dev.mkdir()
        for node in s["devices"]:
            (container_dev / Path(node).name).touch()
        monkeypatch.delenv(npu_host.VISIBLE_ENV, raising=False)
        assert npu_host.acl_device_id(n, container_dev) == 0, name
        monkeypatch.setenv(npu_host.VISIBLE_ENV, s["environment"][npu_host.VISIBLE_ENV])
        assert npu_host.acl_device_id(n, tmp_path / "no-dev") == 0, name
        monkeypatch.delenv(npu_host.VISIBLE_ENV)
        assert npu_host.acl_device_id(n, tmp_path / "no-dev") == n  # without either, ACL is asked for N


@pytest.mark.slow
def test_the_compose_worker_commands_complete_a_job_as_plain_processes(services, redis_url, processes, tmp_path,
                                                                        selftest_set, tiny_onnx):
    ann, img = selftest_set
    compose_broker = services["preprocess"]["environment"]["EVALUATOR_BROKER"]
    swap = {compose_broker: redis_url, "/models/model.onnx": str(tiny_onnx), "/models/model.om": str(tiny_onnx),
            "/store": str(tmp_path / "store"), "/runs": str(tmp_path / "runs"),
            "/data/coco/annotations/instances_val2017.json": str(ann), "/data/coco/val2017": str(img)}

    def plain(argv: list[str]) -> list[str]:
        assert argv[0] == "python", argv
        return [swap.get(a, a) for a in argv[1:]]

    for name in ("preprocess", "reducer", "cpu0"):
        env_broker = services[name]["environment"]["EVALUATOR_BROKER"]
        assert env_broker == compose_broker  # every service finds the broker the same way
        processes.wait_ready(processes.spawn(name, plain(shlex.split(services[name]["command"])), redis_url))
    argv = plain(services["submit"]["entrypoint"]) + ["--batch", "2", "--static-size", "320", "--timeout", "240"]
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env=processes.env(redis_url))
    assert out.returncode == 0, out.stderr[-3000:]
    (report_path,) = (tmp_path / "runs").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert report["coverage"]["ok"] and report["params"]["backend"] == "onnxruntime"
    assert report["params"]["store"] == str(tmp_path / "store") and any((tmp_path / "store").iterdir())
    logs = "".join(p.log_path.read_text() for p in processes.procs)
    assert re.search(r"Task evaluator\.reduce\[[^\]]+\] succeeded", logs)
    assert "reducer-" in (tmp_path / "reducer.log").read_text()


@pytest.mark.slow
def test_an_npu_service_opens_acl_device_0_for_the_one_device_its_container_sees(services, redis_url, processes,
                                                                                 tmp_path, monkeypatch):
    """npu3 as a plain process with the service's own environment: the ais_bench test double records the device id
    the worker opens; a container given /dev/davinci3 alone numbers it 0."""
    service = services["npu3"]
    assert service["devices"][0] == "/dev/davinci3" and service["environment"]["EVALUATOR_NPU_VISIBLE"] == "3"
    om = tmp_path / "model.om"
    om.write_text(json.dumps({"inputs": [["input", [1, 3, 64, 64]]],
                              "outputs": [["dets", [1, 100, 5]], ["labels", [1, 100]]]}))
    om.chmod(0o640)
    opened = tmp_path / "sessions.jsonl"
    for name, value in service["environment"].items():
        if name != "EVALUATOR_BROKER":
            monkeypatch.setenv(name, value)
    doubles = str(REPO / "tests" / "doubles")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([doubles, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("AIS_DOUBLE_LOG", str(opened))
    argv = [{"/models/model.om": str(om), "/store": str(tmp_path / "store")}.get(a, a)
            for a in shlex.split(service["command"])[1:]]
    worker = processes.spawn("npu3", argv + ["--broker", redis_url], redis_url)
    processes.wait_ready(worker)
    (session,) = [json.loads(line) for line in opened.read_text().splitlines()]
    assert session["device_id"] == 0 and session["model_path"] == str(om)
    log = processes.log(worker)
    assert "npu:3 runs as ACL device 0" in log and "took npu:3" in log  # the lease keeps the host's number
