"""Redis over TLS: a job runs through a TLS-only broker that asks for client certificates (real workers, Flower
on it too), and plain, wrong-password or unverifiable connections to it are refused in one line, exit 2."""
from __future__ import annotations

import itertools
import json
import ssl
import subprocess
import sys

import pytest

from orchestrator.__main__ import main
from orchestrator.cluster import free_port
from real_processes import REPO, get_json, run_cli, wait_for
from tasks.settings import TLS_ENV, BrokerTls, Settings, celery_config
from tasks.state import JobState
from tls_broker import PASSWORD, make_certificates, start_tls_broker

LOGIN = "ops:tls-dashboard-pass"
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    broker = start_tls_broker(make_certificates(tmp_path_factory.mktemp("tls")))
    yield broker
    broker.stop()


@pytest.fixture
def tls_url(tls_broker) -> str:
    """A database of the TLS broker no other test uses."""
    url = tls_broker.url(next(_databases))
    JobState.open(url, tls=tls_broker.tls).r.flushdb()
    return url


@pytest.fixture(autouse=True)
def no_tls_environment(monkeypatch):
    """Each test names its TLS files itself (flags, or the environment where it says so)."""
    for name in TLS_ENV.values():
        monkeypatch.delenv(name, raising=False)


def refusals(broker) -> list[tuple[str, str, list[str], str]]:
    """(what, URL, TLS flags, what the one line says) for each connection the TLS broker refuses."""
    ca_only = ["--tls-ca", broker.tls.ca]
    return [
        ("plain redis://", broker.url(scheme="redis"), [], "a TLS-only Redis drops plain connections"),
        ("wrong password", broker.url(password="not-the-password"), broker.flags(), "invalid username-password"),
        ("no password", broker.url(password=""), broker.flags(), "Authentication required"),
        ("a CA that did not sign the server's certificate", broker.url(), [], "certificate verify failed"),
        ("no client certificate", broker.url(), ca_only, "asks for a client certificate"),
    ]


@pytest.mark.parametrize("command", ["status", "submit"])
def test_plain_and_wrong_password_connections_to_the_tls_broker_are_refused_in_one_line(command, tls_broker,
                                                                                         selftest_set, capsys):
    ann, img = selftest_set
    job_args = ["--annotations", str(ann), "--images", str(img), "--backend", "sim:10ms"] if command == "submit" else []
    for what, url, flags, says in refusals(tls_broker):
        assert main([command, "--broker", url, *flags, *job_args]) == 2, what
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: cannot reach the broker: "), (what, err)
        assert says in err, (what, err)
        assert PASSWORD not in err and "not-the-password" not in err  # the URL is printed without its password
    assert main([command, "--broker", tls_broker.url(), "--tls-ca", "/no/such/ca.crt", *job_args]) == 2
    assert capsys.readouterr().err.strip() == "error: TLS file not found: /no/such/ca.crt (--tls-ca)"


def test_the_tls_files_go_to_every_client_of_a_rediss_broker_and_to_none_of_a_plain_one(tls_broker, monkeypatch,
                                                                                          tmp_path):
    tls = BrokerTls.from_flags(tls_broker.url(), *tls_broker.flags()[1::2])
    config = celery_config(Settings(broker_url=tls_broker.url(), tls=tls))
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": tls.ca, "ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
    assert config["broker_use_ssl"] == expected and config["redis_backend_use_ssl"] == expected
    assert "broker_use_ssl" not in celery_config(Settings(broker_url="redis://127.0.0.1:1/0", tls=tls))
    monkeypatch.setenv(TLS_ENV["ca"], str(tmp_path / "missing.crt"))  # the environment's files matter to rediss://
    assert BrokerTls.from_flags("redis://head:6379/0") == BrokerTls()
    with pytest.raises(ValueError, match=r"\(EVALUATOR_TLS_CA\)$"):
        BrokerTls.from_flags(tls_broker.url())
    with pytest.raises(ValueError, match=r"not redis:// \(--tls-ca\)$"):
        BrokerTls.from_flags("redis://head:6379/0", tls.ca)
    with pytest.raises(ValueError, match=r"\(--tls-key\)$"):
        BrokerTls.from_flags(tls_broker.url(), tls.ca, tls.cert)
    # the task sender's own kombu connection presents the same files (a job's messages go over it)
    state = JobState.open(tls_broker.url(next(_databases)), tls=tls)
    assert state.tasks.connection.ssl == tls.ssl_options()
    state.tasks.reduce("job-over-tls")
    assert state.r.llen(state.keys.queue("reduce")) == 1


@pytest.mark.slow
def test_a_job_runs_through_a_tls_only_broker(tls_broker, tls_url, processes, selftest_set, tmp_path, monkeypatch):
    flags = tls_broker.flags()
    pool = processes.spawn("preprocess", ["-m", "workers", "--preprocess", "--broker", tls_url, "--concurrency", "1",
                                          *flags], tls_url)
    device = processes.device_worker(tls_url, "cpu:0", *flags)
    for proc in (pool, device):
        processes.wait_ready(proc)
    ann, img = selftest_set
    out = run_cli("submit", "--broker", tls_url, *flags, "--annotations", str(ann), "--images", str(img),
                  "--backend", "sim:10ms", "--batch", "2", "--static-size", "320", "--timeout", "240",
                  "--run-dir", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr[-3000:]
    (report_path,) = (tmp_path / "runs").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert report["coverage"]["ok"] and report["status"] == "done" and report["ap"]["stats"]["AP"] == 1.0
    status = run_cli("status", report["job"], "--broker", tls_url, *flags)
    assert status.returncode == 0 and f"{report['job']}  done" in status.stdout, status.stderr

    # Flower on the same broker, the TLS files from the environment this time
    base = f"http://127.0.0.1:{free_port()}"
    with monkeypatch.context() as env:
        for name, path in zip(("ca", "cert", "key"), flags[1::2]):
            env.setenv(TLS_ENV[name], path)
        env.setenv("FLOWER_BASIC_AUTH", LOGIN)
        processes.spawn("dashboard", ["-m", "orchestrator", "dashboard", "--broker", tls_url,
                                      "--port", base.rsplit(":", 1)[1]], tls_url)
    workers = wait_for(lambda: get_json(base + "/api/workers?refresh=1", LOGIN)[1], 60, 0.5,
                       what="Flower to reach the workers over the TLS broker")
    assert any(name.startswith("cpu:0-") for name in workers) and any(n.startswith("cpu-pool-") for n in workers)
    status_code, queues = get_json(base + "/api/queues/length", LOGIN)
    assert status_code == 200 and {q["name"] for q in queues["active_queues"]} >= {"infer", "preprocess"}


def test_a_worker_the_tls_broker_refuses_says_so_in_one_line_before_it_starts(tls_broker):
    out = subprocess.run([sys.executable, "-m", "workers", "--device", "cpu:0", "--broker",
                          tls_broker.url(password="not-the-password"), *tls_broker.flags()],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the broker refused this worker" in lines[0] and "invalid username-password" in lines[0]
    assert "not-the-password" not in out.stderr and "Traceback" not in out.stderr
