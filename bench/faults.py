"""Faults to inject into a running cluster, shared by bench/chaos.py and the fault tests.

`SilentRelay` stands between one process and Redis on loopback: it forwards both ways until told to go
silent, then holds every byte (sent data stays in the kernel's buffers, connections stay open, new ones are
accepted and held too), as a link to a host that vanished without a reset does, and forwards again when told
to resume. A socket timeout is the only way a client can notice.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

CHUNK = 65536


class SilentRelay:
    """A TCP relay from a free loopback port to the Redis at `redis_url`, which can go silent and resume; `url` is
    the same Redis (password, database) through the relay."""

    def __init__(self, redis_url: str):
        parts = urlsplit(redis_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{self.port}"
                                             if "@" in parts.netloc else f"127.0.0.1:{self.port}"))
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> "SilentRelay":
        threading.Thread(target=self._accept, name="relay accept", daemon=True).start()
        return self

    def go_silent(self) -> None:
        """Stop forwarding, closing nothing."""
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    def close(self) -> None:
        self._closed.set()
        self._forwarding.set()
        with self._lock:
            for s in [self._listener, *self._sockets]:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._forwarding.wait()  # a connection made while silent is held, like its bytes
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), name="relay pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self._forwarding.wait()  # while silent, nothing is read: bytes wait in the kernel's buffers
                data = src.recv(CHUNK)
                if not data:
                    break
                self._forwarding.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:  # one side closed (a client that gave up, say): close the pair, as a real link would
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def redis_pid(port: int) -> int:
    """The pid of the redis-server listening on this loopback port (its command line names the port)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"redis-server 127.0.0.1:{port}".encode() in (proc / "cmdline").read_bytes():
                return int(proc.name)
        except OSError:
            continue
    raise LookupError(f"no redis-server on port {port}")


def signal_process(pid: int, sig: int) -> bool:
    """Send `sig`; False when the process is already gone."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False

