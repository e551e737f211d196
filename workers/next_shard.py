"""Cross-shard prefetch: a device worker takes its next shard one batch early and loads that shard's first batch
while the last batch of this one runs, so the device never waits for tensors between shards.

How: at the last batch of a shard (or earlier when the batches left take under NEXT_SHARD_LEAD_S: a fast device),
the worker raises its consumer's prefetch count by one (kombu's QoS), so one more infer message is reserved.
Celery's consumer loop (`asynloop` on kombu's hub) applies a new count between two polls, and a poll waits
for the next timer (up to seconds), so the worker wakes the loop through `Hub.call_soon`, which writes to the
hub's waker from any thread (kombu >= 5.7). A remote-control ping would wake it too, but the Redis
transport's pidbox is a fanout: every worker of the cluster receives and decodes every ping (0.26 of a core
at 32 devices on this machine, growing with the square of the devices). When the message arrives (Celery's
`task_received` signal, on the consumer's thread) its shard is recorded in the device lease as `next` and its
first batch is loaded on the worker's loader thread. When the shard ends the count goes back down: a worker
never holds more than one shard beyond the one it runs, and only for its last batch or NEXT_SHARD_LEAD_S
(fairness: at the end of a job a shard taken early is one that no idle device could have started much sooner).
If the worker dies, its lease expires and the reaper gives back both shards (workers/reaper.py); the lost-work
check counts a `next` shard as taken (tasks/recovery.py).

Once the running shard's last batch is on the device and that first batch is loaded, it is put on the device
too (`chain_after`), queued behind the last batch: the device goes from one shard to the next without waiting
for the shard's end (its result write, the task's ack, the next task's start checks: 15 ms median, up to 60-140
ms when 32-64 devices end shards at once on 2 cores). The next task finds that batch running; a task that is
skipped (its job ended, its shard already written) drops it, and its arrays come back when the device is done.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Callable

log = logging.getLogger("workers.next_shard")

INFER_TASK = "evaluator.infer"
NEXT_SHARD_LEAD_S = 0.5  # the message's fetch and the first batch's load (8 inputs at 1216: about 0.15 s of CPU)


class NextShard:
    """One device worker's prefetch of its next shard. `preload(job, shard)` runs on the loader and returns what
    `run_shard` would have loaded first (or None when it cannot tell); `launch(preloaded, after)` puts that batch on
    the device behind the running call `after` and returns the running batch (or None when it cannot);
    `drop(preloaded)` gives back what a preloaded shard that will not run holds."""

    def __init__(self, submit: Callable[..., Future], preload: Callable[..., object],
                 note: Callable[[dict], None], launch: Callable[..., object], drop: Callable[[object], None]):
        self.submit, self.preload, self.note = submit, preload, note
        self.launch, self.drop = launch, drop
        self.consumer = None  # Celery's consumer, known from the first message it hands over
        self._lock = threading.Lock()
        self._wanted = False
        self._raised = False
        self._loaded: dict[tuple[str, int], Future] = {}
        self._after = None  # the running shard's last batch, once on the device: what a loaded first batch follows

    def on_received(self, sender=None, request=None, **_) -> None:
        """Celery's task_received (the consumer's thread): remember the consumer; take the wanted shard."""
        self.consumer = sender if sender is not None and hasattr(sender, "qos") else self.consumer
        if request is None or request.name != INFER_TASK:
            return
        with self._lock:
            if not self._wanted:
                return
            self._wanted = False
        kwargs = request.kwargs or {}
        job, shard, batch = kwargs.get("job_id"), int(kwargs.get("shard", -1)), int(kwargs.get("batch", 1))
        if job is None or shard < 0:
            return
        next_record = {"job": job, "shard": shard, "batch": batch, "task": request.id}
        try:
            self.note(next_record)
        except Exception as exc:  # noqa: BLE001 - the shard still runs; only its give-back on a crash is slower
            log.warning("could not record the next shard %d of job %s in the lease: %s", shard, job, exc)
        future = self.submit(self.preload, job, shard)
        with self._lock:
            self._loaded[(job, shard)] = future
        future.add_done_callback(lambda _: self._chain())

    def chain_after(self, last) -> None:
        """The running shard's last batch is on the device: a next shard's first batch loaded by now, or as soon
        as it is, follows it there."""
        with self._lock:
            self._after = last
        self._chain()

    def _chain(self) -> None:
        with self._lock:
            if self._after is None:
                return
            for future in self._loaded.values():
                if not future.done() or future.exception() is not None:
                    continue
                pre = future.result()
                if pre is not None and pre.running is None:
                    try:
                        pre.running = self.launch(pre, self._after)
                    except Exception as exc:  # noqa: BLE001 - the next task launches it the usual way
                        log.warning("the next shard's first batch was not put on the device: %s", exc)
                    self._after = None  # one batch follows a shard's last
                    return

    def reserve(self) -> None:
        """This shard ends soon: let the consumer take one more infer message (once per shard)."""
        if self.consumer is None:
            return
        with self._lock:
            if self._raised:
                return
            self._raised = self._wanted = True
        self.consumer.qos.increment_eventually()
        hub = getattr(self.consumer, "hub", None)
        if hub is not None:
            hub.call_soon(self.consumer.qos.update)  # wakes the consumer loop, which applies the count at once

    def release(self) -> None:
        """The shard ended: back to the usual prefetch count (the next shard, if one came, is queued to run)."""
        with self._lock:
            raised, self._raised, self._wanted = self._raised, False, False
        if raised:
            self.consumer.qos.decrement_eventually()

    def take(self, job: str, shard: int):
        """At a shard's start: its first batch loaded (and maybe running) ahead of time, or None; what was loaded
        for another shard is dropped. Nothing is chained from here until this shard's last batch is on the
        device."""
        with self._lock:
            self._after = None
            future = self._loaded.pop((job, shard), None)
            others, self._loaded = list(self._loaded.values()), {}
        for other in others:
            other.add_done_callback(self._dropped)
        if future is None:
            return None
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - loaded again the usual way
            log.warning("the first batch of shard %d of job %s was not loaded ahead: %s", shard, job, exc)
            return None

    def _dropped(self, future: Future) -> None:
        if future.exception() is None and future.result() is not None:
            self.drop(future.result())
