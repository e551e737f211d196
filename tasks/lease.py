"""Leases on Redis (DESIGN.md section 6): one generic lease, and the device lease that adds fencing and a registry.

A lease is a key holding a token record, taken with SET NX PX, extended by a heartbeat with a
compare-and-pexpire and released with a compare-and-delete (each step a script in tasks/lua/). The
reducer lease of a job is a plain Lease; `DeviceLease` also draws a new fencing number on every
acquisition, records the shard in flight, and keeps a durable copy of its record in the registry
(`P:leases`, no TTL) so that the reaper still sees a dead holder's shard after its lease expired.
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

import redis

from tasks.keys import Keys, prefix_from_env
from tasks.periodic import Periodic
from tasks.scripts import Scripts

log = logging.getLogger("tasks.lease")


def describe_holder(record: dict) -> str:
    """`host H pid P since HH:MM:SS (job J shard S)`: who holds a lease, in words."""
    since = datetime.fromtimestamp(float(record.get("since", 0))).strftime("%Y-%m-%d %H:%M:%S")
    text = f"host {record.get('host')} pid {record.get('pid')} since {since}"
    shard = record.get("shard")
    if shard:
        text += f" (job {shard['job']} shard {shard['shard']})"
    return text


class Lease:
    """One holder of `key` at a time; `lost` is set when an extension finds the lease expired or taken over."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float, host: str | None = None, pid: int | None = None,
                 fields: dict | None = None):
        self.client, self.key = client, key
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self.fields = fields or {}  # what the holder tells the others beside who it is
        self.ttl_ms = int(ttl_s * 1000)
        self.scripts = Scripts(client)
        self.token: str | None = None
        self.lost = threading.Event()
        self._heartbeat: Periodic | None = None

    def new_record(self) -> dict:
        return {**self.fields, "token": secrets.token_hex(16), "host": self.host, "pid": self.pid,
                "since": time.time()}

    def try_acquire(self) -> bool:
        record = self.new_record()
        if self.client.set(self.key, json.dumps(record), nx=True, px=self.ttl_ms):
            self.token = record["token"]
            self.lost.clear()
            return True
        return False

    def extend(self) -> bool:
        ok = self.token is not None and bool(self.scripts.lease_extend(keys=[self.key], args=[self.token,
                                                                                              self.ttl_ms]))
        if not ok:
            self.lost.set()
        return ok

    @property
    def held(self) -> bool:
        return self.token is not None and not self.lost.is_set()

    def _beat(self) -> None:
        if self.token is not None and not self.lost.is_set() and not self.extend():
            log.error("lost the lease %s (expired or taken over)", self.key)

    def start_heartbeat(self, interval_s: float | None = None) -> None:
        """Extend every interval_s (default TTL/3) from a daemon thread; a failed extension marks the lease lost."""
        if self._heartbeat is None:
            self._heartbeat = Periodic(f"heartbeat {self.key}", interval_s or self.ttl_ms / 3000.0, self._beat,
                                       log).start()

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None

    def release(self) -> bool:
        """Compare-and-delete; the heartbeat stops."""
        self._stop_heartbeat()
        if self.token is None:
            return False
        ok = bool(self.scripts.lease_release(keys=[self.key], args=[self.token]))
        self.token = None
        return ok


class DeviceLease(Lease):
    """Exclusive use of `device` on `host`; `fence` grows by one on every acquisition."""

    def __init__(self, client: redis.Redis, device: str, ttl_s: float, host: str | None = None,
                 pid: int | None = None, keys: Keys | None = None):
        self.keys = keys or Keys(prefix_from_env())
        self.device = device
        host = host or socket.gethostname()
        super().__init__(client, self.keys.lease(host, device), ttl_s, host, pid)
        self.fence_key = self.keys.fence(self.key)
        self.registry = self.keys.leases()
        self.fence: int | None = None

    def try_acquire(self) -> tuple[bool, dict | None]:  # type: ignore[override]
        """(True, previous registry record or None) when taken; (False, holder's record) when held."""
        record = {**self.new_record(), "device": self.device, "shard": None}
        reply = self.scripts.device_acquire(keys=[self.key, self.fence_key, self.registry],
                                            args=[json.dumps(record), self.ttl_ms])
        if int(reply[0]) == 0:
            return False, json.loads(reply[1])
        self.token, self.fence = record["token"], int(reply[1])
        self.lost.clear()
        return True, (json.loads(reply[2]) if reply[2] else None)

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

    def mark(self, shard: dict | None) -> bool:
        """Record the shard in flight (None clears it); False when the lease is no longer ours."""
        if self.token is None:
            return False
        ok = bool(self.scripts.device_mark(keys=[self.key, self.registry], args=[self.token, json.dumps(shard)]))
        if not ok:
            self.lost.set()
        return ok

    def release(self) -> bool:
        """Compare-and-delete, keeping the registry record while a shard is in flight (the reaper gives it back)."""
        self._stop_heartbeat()
        if self.token is None:
            return False
        ok = bool(self.scripts.device_release(keys=[self.key, self.registry], args=[self.token]))
        self.token = None
        return ok


def held_shards(record: dict) -> list[dict]:
    """A device lease record's shards: the one it runs and the one it took early to run next (either may be absent)."""
    shard = record.get("shard") or {}
    return [r for r in (shard, shard.get("next")) if r]


class LeaseRegistry:
    """The durable records of every device lease on a broker (`P:leases`)."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.client, self.key, self.keys = client, keys.leases(), keys
        self.scripts = Scripts(client)

    def records(self) -> list[dict]:
        return [json.loads(raw) for raw in self.client.hvals(self.key)]

    def entries(self) -> list[tuple[str, dict, bool]]:
        """Every registered device lease as (lease key, record, still held), liveness read in one round trip."""
        entries = self.client.hgetall(self.key)
        with self.client.pipeline(transaction=False) as p:
            for key in entries:
                p.exists(key)
            held = p.execute()
        return [(key, json.loads(raw), bool(h)) for (key, raw), h in zip(entries.items(), held)]

    def held_count(self) -> int:
        """Devices whose lease is held right now."""
        return sum(held for _, _, held in self.entries())

    def registered(self) -> int:
        return int(self.client.hlen(self.key))

    def in_flight(self, job_id: str | None = None) -> list[dict]:
        """The shards that devices holding a live lease run now (of `job_id`, or of every job): each lease's shard
        record (job, shard, batch, since, task id) with its device as host/device."""
        return [{**rec["shard"], "device": f"{rec['host']}/{rec['device']}"} for _, rec, held in self.entries()
                if held and rec.get("shard") and job_id in (None, rec["shard"].get("job"))]

    def taken(self, job_id: str) -> dict[int, str]:
        """Shards of the job that a device holding a live lease runs, or took one batch early to run next."""
        return {int(record["shard"]): f"{rec['host']}/{rec['device']}" for _, rec, held in self.entries() if held
                for record in held_shards(rec) if record.get("job") == job_id}

    def shards_in_flight(self, job_id: str) -> dict[int, str]:
        """Shards of the job that a device holding a live lease runs now: shard -> host/device."""
        return {int(shard["shard"]): shard["device"] for shard in self.in_flight(job_id)}

    def claim_expired(self) -> list[dict]:
        """Take every record whose lease expired unreleased (its holder died or hung): each once, over all reapers."""
        claimed = []
        for field in self.client.hkeys(self.key):
            raw = self.scripts.device_reap(keys=[self.key, field, self.keys.fence(field)])
            if raw:
                claimed.append(json.loads(raw))
        return claimed
