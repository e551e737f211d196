"""One thread that owns the device: the backend is created, run and closed on it.

ACL (Ascend) and CUDA keep a current context per thread; a worker's Celery pool, its loader thread and
its main thread are other threads. Every backend call goes through here, so the context a backend made
when it loaded is the one its inference runs in, whichever pool thread runs the task.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class DeviceThread:
    def __init__(self, device: str):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"device-{device}")

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """fn(*args, **kwargs) on the device thread; its exception is raised here."""
        return self.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future:
        """fn(*args, **kwargs) queued on the device thread; the caller goes on meanwhile."""
        return self._executor.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
