"""A TLS-only redis-server for tests: a CA, server and client certificates made by `openssl`, the server on a free
loopback port with no plain port at all. Imported by the tests that need it (named uniquely, like real_processes)."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cluster import free_port, log_tail
from real_processes import wait_for
from tasks.settings import BrokerTls
from tasks.state import answers

PASSWORD = "tls-test-password"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def signed(folder: Path, name: str, subject: str, extensions: str) -> None:
    """name.key and name.crt, signed by the CA in `folder`."""
    (folder / f"{name}.ext").write_text(extensions)
    openssl("req", "-new", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=folder)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


def make_certificates(folder: Path) -> Path:
    """ca.crt, redis.crt/.key (for 127.0.0.1 and localhost), client.crt/.key, all from one self-made CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl; .ci/run does)")
    folder.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-new", *EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=evaluator test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    signed(folder, "redis", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                             "authorityKeyIdentifier=keyid\n")
    signed(folder, "client", "/CN=evaluator client", "basicConstraints=CA:FALSE\nauthorityKeyIdentifier=keyid\n")
    return folder


@dataclass
class TlsBroker:
    """A running TLS-only redis-server that asks every client for a certificate signed by its CA."""

    folder: Path
    port: int
    proc: subprocess.Popen

    def url(self, db: int = 0, password: str = PASSWORD, scheme: str = "rediss") -> str:
        return f"{scheme}://:{password}@127.0.0.1:{self.port}/{db}"

    @property
    def tls(self) -> BrokerTls:
        return BrokerTls(str(self.folder / "ca.crt"), str(self.folder / "client.crt"), str(self.folder / "client.key"))

    def flags(self) -> list[str]:
        return ["--tls-ca", self.tls.ca, "--tls-cert", self.tls.cert, "--tls-key", self.tls.key]

    def stop(self) -> None:
        self.proc.kill()  # a test's server: nothing of it is kept
        self.proc.wait()


def start_tls_broker(folder: Path) -> TlsBroker:
    """redis-server with TLS alone (`--port 0`) and the certificates of make_certificates(folder)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    return launch(folder, [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                           "--tls-cert-file", "redis.crt", "--tls-key-file", "redis.key", "--tls-ca-cert-file", "ca.crt",
                           "--requirepass", PASSWORD, "--databases", "64", "--save", "", "--appendonly", "no",
                           "--dir", str(folder)], port)


def launch(folder: Path, argv: list[str], port: int, env: dict | None = None, scheme: str = "rediss",
           password: str = PASSWORD) -> TlsBroker:
    """Start `argv` (a redis-server on `port`, certificates in `folder`) and wait until it answers at `scheme`."""
    with open(folder / "redis.log", "ab") as log:
        proc = subprocess.Popen(argv, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
    broker = TlsBroker(folder, port, proc)

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited: {log_tail(folder / 'redis.log')}")
        return answers(broker.url(password=password, scheme=scheme), tls=broker.tls)
    try:
        wait_for(up, 15, 0.1, what=f"redis-server to answer at {scheme}://")
    except BaseException:
        broker.stop()
        raise
    return broker
