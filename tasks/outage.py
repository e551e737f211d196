"""Riding out a broker outage: what counts as one, how long a process waits, and how it says so once.

Two ways, for two kinds of process:
- a worker's Redis client retries every command itself (`RideOutRetry`, given to redis-py), backing off up
  to every 2 s, for up to `broker_timeout_s`: a shard, a heartbeat or the reducer simply resumes where it was
  when Redis answers again; the first failure and the recovery are logged once each.
- a command a person watches (submit, resume, status) keeps its client's retries short and loops itself
  (`Outage.call`), so that it can keep the progress bar and the embedded cluster's supervision going while
  it waits, and give up after `--broker-timeout` with one line and its own exit code.
"""
from __future__ import annotations

import ctypes
import logging
import socket
import ssl
import threading
import time
from multiprocessing.sharedctypes import RawValue
from typing import Callable, TypeVar

import kombu.exceptions
import redis
from celery.worker.request import Request
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

BROKER_TIMEOUT_S = 600.0  # how long a process waits for an unreachable broker before it gives up
BROKER_UNREACHABLE_EXIT = 3  # a command's exit code when it gave up on the broker (the job stays resumable)
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.1, 2.0

# redis-py's ConnectionError covers a refused or reset connection and a Redis still loading its AOF
# (BusyLoadingError); kombu raises OperationalError when it cannot publish.
BROKER_ERRORS = (redis.ConnectionError, redis.TimeoutError, socket.timeout, kombu.exceptions.OperationalError)

T = TypeVar("T")
log = logging.getLogger("tasks.outage")


# in memory shared with the processes forked after this import: a pool's prefork children see its shutdown too
_shutting_down = RawValue(ctypes.c_bool, False)


def stop_riding_out() -> None:
    """The process is shutting down: from now on a command fails at once instead of waiting for the broker
    (a worker's warm shutdown must not wait out an outage, nor a cluster that is gone).

    Celery calls it from its SIGTERM handler in a worker's main process, so it only writes a flag, and the flag
    is shared with the pool's prefork children, which get no signal of their own. Two faults of the chaos
    bench's kill of `submit` (the pool outlived its cluster by minutes, 1 run in about 10): it was a
    `threading.Event`, and a second SIGTERM that interrupted the first handler inside `Event.set` waited for the
    lock that handler held; and a child in the middle of a preprocessing task rode the outage out for
    --broker-timeout while its parent waited for it.
    """
    _shutting_down.value = True


def shutting_down() -> bool:
    """Whether this process, or the pool it was forked from, is shutting down."""
    return bool(_shutting_down.value)


class BrokerUnreachable(RuntimeError):
    """The broker did not answer for longer than the process was told to wait."""


def refused(exc: BaseException) -> bool:
    """The broker answered and said no (a wrong password, a certificate it or we do not trust): waiting cannot
    help, unlike a broker that is away."""
    return isinstance(exc, redis.AuthenticationError) or \
        isinstance(exc.__cause__, ssl.SSLError) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc)


def describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}".split("\n")[0]


class RideOutRetry(Retry):
    """redis-py's retry with a time budget instead of a count; the process logs the outage once, whichever thread
    meets it first, and its end once. A retry inside a retry (redis-py reconnects under a command's retry) runs
    once: the outer one waits."""

    _nested = threading.local()
    _lock = threading.Lock()
    _since: float | None = None  # when this process first met the outage

    def __init__(self, budget_s: float, logger: logging.Logger = log):
        super().__init__(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), -1,
                         (redis.ConnectionError, redis.TimeoutError, socket.timeout))
        self.budget_s = budget_s
        self.log = logger

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        if getattr(self._nested, "depth", 0):
            return do()
        self._nested.depth = 1
        try:
            return self._retry(do, fail, with_failure_count)
        finally:
            self._nested.depth = 0

    def _retry(self, do, fail, with_failure_count):
        failures, since = 0, None
        while True:
            try:
                result = do()
            except self._supported_errors as error:
                failures += 1
                fail(error, failures) if with_failure_count else fail(error)
                if refused(error):
                    raise
                since = since or time.monotonic()
                self._announce(error)
                if time.monotonic() - since > self.budget_s or shutting_down():
                    raise
                time.sleep(self._backoff.compute(failures))
            else:
                if failures:
                    self._recovered()
                return result

    def _announce(self, error: BaseException) -> None:
        with self._lock:
            if RideOutRetry._since is None:
                RideOutRetry._since = time.monotonic()
                self.log.warning("broker unreachable (%s), retrying for up to %.0f s", describe(error),
                                 self.budget_s)

    def _recovered(self) -> None:
        with self._lock:
            if RideOutRetry._since is not None:
                self.log.warning("broker back after %.1f s", time.monotonic() - RideOutRetry._since)
                RideOutRetry._since = None


class Outage:
    """A command's patience with the broker: `call(fn)` retries `fn` until it works or `timeout_s` passes.

    `say(line)` is called once when an outage begins and once when it ends; `waiting(seconds)` on every retry
    (a progress bar shows it); `tick()` on every retry too (the embedded cluster restarts its Redis there).
    """

    def __init__(self, timeout_s: float = BROKER_TIMEOUT_S, say: Callable[[str], None] | None = None,
                 waiting: Callable[[float], None] | None = None, tick: Callable[[], None] | None = None):
        self.timeout_s = timeout_s
        self.say = say or (lambda line: None)
        self.waiting = waiting or (lambda seconds: None)
        self.tick = tick or (lambda: None)
        self.since: float | None = None

    def call(self, fn: Callable[[], T]) -> T:
        backoff = ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
        failures = 0
        while True:
            try:
                result = fn()
            except BROKER_ERRORS as exc:
                failures += 1
                self._failed(exc)
                time.sleep(backoff.compute(failures))
                self.tick()
            else:
                if self.since is not None:
                    self.say(f"broker back after {time.monotonic() - self.since:.0f} s")
                    self.since = None
                return result

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            self.say(f"broker unreachable ({describe(exc)}), retrying for up to {self.timeout_s:.0f} s "
                     "(--broker-timeout)")
        waited = now - self.since
        if waited > self.timeout_s:
            raise BrokerUnreachable(f"broker unreachable for {waited:.0f} s (--broker-timeout)")
        self.waiting(waited)


_ack_budget_s = BROKER_TIMEOUT_S


def ride_out_acks_for(seconds: float) -> None:
    """How long a task's ack waits for the broker in this process (a worker's --broker-timeout)."""
    global _ack_budget_s
    _ack_budget_s = seconds


class AckRidingOut(Request):
    """A task request whose late ack rides out a broker outage (`Task.Request` of the evaluator's tasks).

    kombu's Redis transport forgets a delivered message only once Redis took its ack; an ack that meets an
    outage is logged and dropped by Celery, and the message then holds the worker's prefetch slot: the worker
    takes no more work until its connection is reset. Retried here until it lands, the broker timeout passes or
    the worker shuts down (its broker may be gone for good: the message comes back, and a shard is written once).
    """

    def acknowledge(self):
        if self.acknowledged:
            return
        try:
            RideOutRetry(_ack_budget_s).call_with_retry(self.message.ack, lambda error: None)
        except BROKER_ERRORS as exc:  # the budget spent, or the worker shutting down
            log.warning("could not ack task %s: %s", self.id, describe(exc))
        self.acknowledged = True
