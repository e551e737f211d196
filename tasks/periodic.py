"""One periodic thread for every background loop (lease heartbeats, the reaper, the reduce follower).

An exception in one round is logged once per distinct message until a round succeeds again, and the loop
goes on: a broker blip must not kill a heartbeat, nor be swallowed silently. A broker outage is logged at
INFO (a command's terminal says it once itself, tasks/outage.py; a worker's log shows INFO), anything
else at WARNING.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from tasks.outage import BROKER_ERRORS, describe


class Periodic:
    """Calls `fn()` every `interval_s` seconds on a daemon thread until `stop()`; `fn` returning False stops it."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object], log: logging.Logger):
        self.name, self.interval_s, self.fn, self.log = name, interval_s, fn, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._last_error: str | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.fn() is False:
                    return
            except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                message = describe(exc)
                if message != self._last_error:
                    level = logging.INFO if isinstance(exc, BROKER_ERRORS) else logging.WARNING
                    self.log.log(level, "%s: %s (retrying every %.1f s)", self.name, message, self.interval_s)
                    self._last_error = message
            else:
                if self._last_error is not None:
                    self.log.info("%s: working again", self.name)
                    self._last_error = None

    @property
    def stopping(self) -> threading.Event:
        """Set once stop() was called: a long round can wait on it."""
        return self._stop

    def start(self) -> "Periodic":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
