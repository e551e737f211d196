"""Fixtures for the worker tests: a shard runner that holds its device lease on a real Redis."""
from __future__ import annotations

import pytest

from tasks.lease import DeviceLease
from tasks.state import JobState
from workers.inference import ShardRunner


@pytest.fixture
def runner(redis_url):
    """A ShardRunner on cpu:0 of host `h`, its lease taken (no heartbeat; a 30 s TTL outlasts a test)."""
    state = JobState.open(redis_url)
    lease = DeviceLease(state.r, "cpu:0", 30.0, host="h")
    lease.try_acquire()
    return ShardRunner(state, lease)
