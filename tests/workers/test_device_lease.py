"""The device lease against a real Redis: one test per Lua script, plus the one-line wait message."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from tasks.keys import Keys
from tasks.lease import DeviceLease
from tasks.scripts import Scripts
from tasks.settings import ClusterTimings
from tasks.state import connect

REGISTRY = Keys().leases()


@pytest.fixture
def client(redis_url):
    return connect(redis_url)


def lease(client, pid, ttl_s=5.0):
    return DeviceLease(client, "cpu:0", ttl_s, host="h", pid=pid)


def test_acquire_is_exclusive_and_fences_grow(client):
    a, b = lease(client, 1), lease(client, 2)
    assert a.try_acquire() == (True, None) and a.fence == 1
    taken, holder = b.try_acquire()
    assert not taken and holder["pid"] == 1 and holder["host"] == "h" and holder["shard"] is None
    assert "token" in holder and holder["since"] == pytest.approx(time.time(), abs=5)
    assert a.release()
    assert b.try_acquire()[0] and b.fence == 2  # every acquisition gets a newer fencing number
    assert json.loads(client.hget(REGISTRY, b.key))["pid"] == 2


def test_acquire_hands_over_the_record_of_a_holder_that_died_mid_shard(client):
    dead = lease(client, 1, ttl_s=0.2)
    dead.try_acquire()
    dead.mark({"job": "j", "shard": 4, "batch": 8, "since": 0})
    time.sleep(0.3)  # expired unreleased
    taken, previous = lease(client, 2).try_acquire()
    assert taken and previous["pid"] == 1 and previous["shard"]["shard"] == 4


def test_extend_only_by_the_holder(client):
    a = lease(client, 1, ttl_s=1.0)
    a.try_acquire()
    b = lease(client, 2, ttl_s=60.0)
    b.token = "not-the-holder"
    assert not b.extend() and b.lost.is_set()
    assert client.pttl(a.key) <= 1000
    a.ttl_ms = 60_000
    assert a.extend() and client.pttl(a.key) > 50_000


def test_extend_fails_once_expired(client):
    a = lease(client, 1, ttl_s=0.1)
    a.try_acquire()
    time.sleep(0.2)
    assert not a.extend() and not a.held


def test_mark_records_the_shard_in_lease_and_registry_keeping_the_ttl(client):
    a = lease(client, 1, ttl_s=30.0)
    a.try_acquire()
    shard = {"job": "j", "shard": 3, "batch": 8, "since": 1.5}
    assert a.mark(shard)
    assert json.loads(client.get(a.key))["shard"] == shard
    assert json.loads(client.hget(REGISTRY, a.key))["shard"] == shard
    assert 25_000 < client.pttl(a.key) <= 30_000
    assert a.mark(None) and json.loads(client.get(a.key))["shard"] is None
    other = lease(client, 2)
    other.token = "someone-else"
    assert not other.mark(shard) and json.loads(client.get(a.key))["shard"] is None


def test_release_is_compare_and_delete(client):
    a = lease(client, 1)
    a.try_acquire()
    stranger = lease(client, 2)
    stranger.token = "stale-token"
    assert not stranger.release() and client.exists(a.key)
    assert a.release() and not client.exists(a.key) and not client.hexists(REGISTRY, a.key)


def test_release_with_a_shard_in_flight_leaves_it_for_the_reaper(client):
    a = lease(client, 1)
    a.try_acquire()
    a.mark({"job": "j", "shard": 1, "batch": 8, "since": 0})
    assert a.release() and not client.exists(a.key)
    assert json.loads(client.hget(REGISTRY, a.key))["shard"]["shard"] == 1


def test_reap_claims_only_expired_records_and_only_once(client):
    scripts = Scripts(client)
    live, dead = DeviceLease(client, "cpu:0", 30, host="h", pid=1), DeviceLease(client, "cpu:1", 0.2, host="h", pid=2)
    for x in (live, dead):
        x.try_acquire()
        x.mark({"job": "j", "shard": x.pid, "batch": 8, "since": 0})
    time.sleep(0.3)
    assert scripts.device_reap(keys=[REGISTRY, live.key, live.fence_key]) is None
    claimed = scripts.device_reap(keys=[REGISTRY, dead.key, dead.fence_key])
    assert json.loads(claimed)["shard"]["shard"] == 2
    assert scripts.device_reap(keys=[REGISTRY, dead.key, dead.fence_key]) is None  # a second reaper gets nothing
    assert client.hexists(REGISTRY, live.key)
    # the reaped holder is fenced off: should it wake and write, its fencing number is stale; the live one's is not
    assert (int(client.get(live.fence_key)), int(client.get(dead.fence_key))) == (live.fence, dead.fence + 1)
    for holder, expected in ((dead, -1), (live, 1)):
        status, _ = scripts.write_result(keys=[holder.fence_key, "results", "job"],
                                         args=[holder.fence, str(holder.pid), "{}", 1, 0])
        assert status == expected, holder.device
    assert client.hget("job", "refused_stale") == "1"


def test_second_worker_waits_and_says_once_who_holds_the_device(client, caplog):
    holder = lease(client, 4242)
    holder.try_acquire()
    holder.mark({"job": "j9", "shard": 7, "batch": 8, "since": 0})
    waiter = lease(client, 5)
    threading.Timer(1.2, holder.release).start()
    with caplog.at_level(logging.INFO, logger="tasks.lease"):
        t0 = time.time()
        fence = waiter.acquire(poll_s=0.1)
    assert time.time() - t0 >= 1.0 and fence == 2
    waits = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert len(waits) == 1
    assert "cpu:0" in waits[0] and "host h pid 4242" in waits[0] and "job j9 shard 7" in waits[0]


def test_the_heartbeat_extends_the_lease_every_third_of_its_ttl(client):
    """README: the lease is extended every TTL/3 (5 s of 15 s): over 4 TTLs, 12 extensions, and it never expires."""
    ttl_s, window_s = 0.6, 2.4
    holder = lease(client, 1, ttl_s)
    assert holder.try_acquire()
    holder.start_heartbeat(ClusterTimings.with_ttl(ttl_s).heartbeat_s)  # as a device worker starts it
    extensions, last, lowest = 0, client.pttl(holder.key), ttl_s * 1000
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        pttl = client.pttl(holder.key)
        assert pttl > 0, "the lease expired under its heartbeat"
        extensions += pttl > last
        last, lowest = pttl, min(lowest, pttl)
        time.sleep(0.01)
    holder.release()
    # every TTL/3 gives 12 (TTL/2 would give 8, TTL/4 16); at worst a beat or two lost to a loaded machine
    assert 10 <= extensions <= 13, extensions
    assert lowest > ttl_s * 1000 / 3, lowest  # extended with two thirds of the TTL still to run, give or take
