"""The device lease (DESIGN.md section 6): one holder per device, heartbeat, fencing, compare-and-delete.

Each atomic step is one Lua script beside this module, registered once per client.
The registry hash `leases` keeps a durable copy of every lease record (no TTL), so the
reaper can still see which shard a holder had in flight after its lease expired.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import redis

REGISTRY = "leases"
_HERE = Path(__file__).parent
log = logging.getLogger("workers.lease")


def _script(name: str) -> str:
    return (_HERE / f"lease_{name}.lua").read_text()


SCRIPTS = {name: _script(name) for name in ("acquire", "extend", "mark", "release", "reap")}


def lease_key(host: str, device: str) -> str:
    return f"lease:{host}:{device}"


def describe_holder(record: dict) -> str:
    """`host H pid P since HH:MM:SS (job J shard S)`: who holds a device, in words."""
    since = datetime.fromtimestamp(float(record.get("since", 0))).strftime("%Y-%m-%d %H:%M:%S")
    text = f"host {record.get('host')} pid {record.get('pid')} since {since}"
    shard = record.get("shard")
    if shard:
        text += f" (job {shard['job']} shard {shard['shard']})"
    return text


class LeaseScripts:
    """The five scripts registered on one client."""

    def __init__(self, client: redis.Redis):
        for name, source in SCRIPTS.items():
            setattr(self, name, client.register_script(source))


class DeviceLease:
    """Exclusive use of `device` on `host`; `fence` grows by one on every acquisition."""

    def __init__(self, client: redis.Redis, device: str, ttl_s: float, host: str | None = None,
                 pid: int | None = None):
        self.device = device
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self.ttl_ms = int(ttl_s * 1000)
        self.key = lease_key(self.host, device)
        self.fence_key = f"{self.key}:fence"
        self.scripts = LeaseScripts(client)
        self.token: str | None = None
        self.fence: int | None = None
        self.lost = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._stop = threading.Event()

    # -- acquire ------------------------------------------------------------------------------------
    def try_acquire(self) -> tuple[bool, dict | None]:
        """(True, previous registry record or None) when taken; (False, holder's record) when held."""
        token = secrets.token_hex(16)
        record = {"token": token, "host": self.host, "device": self.device, "pid": self.pid,
                  "since": time.time(), "shard": None}
        reply = self.scripts.acquire(keys=[self.key, self.fence_key, REGISTRY],
                                     args=[json.dumps(record), self.ttl_ms])
        if int(reply[0]) == 0:
            return False, json.loads(reply[1])
        self.token, self.fence = token, int(reply[1])
        self.lost.clear()
        previous = json.loads(reply[2]) if reply[2] else None
        return True, previous

    def acquire(self, poll_s: float = 0.5, on_previous=None, stop: threading.Event | None = None) -> int:
        """Wait until the device is ours; says once, in one line, who holds it meanwhile. Returns the fence."""
        said = False
        while True:
            taken, other = self.try_acquire()
            if taken:
                log.info("took %s on %s (fencing number %d)", self.device, self.host, self.fence)
                if other and other.get("shard") and other.get("token") != self.token and on_previous:
                    on_previous(other)  # the previous holder died with a shard in flight
                return self.fence
            if not said:
                log.warning("waiting for %s: held by %s", self.device, describe_holder(other))
                said = True
            if stop is not None and stop.wait(poll_s):
                raise InterruptedError(f"stopped while waiting for {self.device}")
            if stop is None:
                time.sleep(poll_s)

    # -- while held -----------------------------------------------------------------------------------
    def extend(self) -> bool:
        ok = self.token is not None and bool(self.scripts.extend(keys=[self.key], args=[self.token, self.ttl_ms]))
        if not ok:
            self.lost.set()
        return ok

    def mark(self, shard: dict | None) -> bool:
        """Record the shard in flight (None clears it); False when the lease is no longer ours."""
        if self.token is None:
            return False
        ok = bool(self.scripts.mark(keys=[self.key, REGISTRY], args=[self.token, json.dumps(shard)]))
        if not ok:
            self.lost.set()
        return ok

    @property
    def held(self) -> bool:
        return self.token is not None and not self.lost.is_set()

    def start_heartbeat(self, interval_s: float) -> None:
        """Extend every interval_s from a daemon thread; a failed extension marks the lease lost."""
        self._stop.clear()

        def beat():
            while not self._stop.wait(interval_s):
                try:
                    if self.token is not None and not self.lost.is_set() and not self.extend():
                        log.error("lost the lease on %s (expired or taken over)", self.device)
                except redis.RedisError as exc:
                    log.warning("heartbeat for %s failed: %s", self.device, exc)

        self._heartbeat = threading.Thread(target=beat, name=f"lease-heartbeat-{self.device}", daemon=True)
        self._heartbeat.start()

    def release(self) -> bool:
        """Compare-and-delete; the heartbeat stops."""
        self._stop.set()
        if self.token is None:
            return False
        ok = bool(self.scripts.release(keys=[self.key, REGISTRY], args=[self.token]))
        self.token = None
        return ok
