"""One shard on one device: load tensors (store or preprocess), run the backend batch by batch, write once."""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from model.postprocess import to_coco_results
from model.preprocess import ImageReadError, clip_sizes, plan_geometry, to_network_input
from tasks.lease import DeviceLease
from tasks.outage import BROKER_ERRORS
from tasks.params import JobParams
from tasks.shards import input_shape, plan_batches
from tasks.state import FINISHED, JobState
from tasks.store import StoreEntry, TensorStore
from workers.backends import create_backend
from workers.backends.base import MAX_DETS, InferenceBatch
from workers.device_thread import DeviceThread
from workers.devices import attest
from workers.next_shard import NEXT_SHARD_LEAD_S, NextShard
from workers.reaper import give_back

log = logging.getLogger("workers.inference")


Progress = Callable[..., None]  # progress(done=, images=, images_per_s=, batch=, device=, host=) after every batch


class LeaseLost(RuntimeError):
    """The device lease expired or was taken over mid-shard: nothing more is run or written."""


class JobStopped(RuntimeError):
    """The job was cancelled (or finished) mid-shard: the shard is abandoned, nothing is written."""


class ShardRunner:
    """What a device worker installs as the body of `evaluator.infer` (see tasks/context.py)."""

    def __init__(self, state: JobState, lease: DeviceLease, store_root: str | None = None):
        self.state = state
        self.lease = lease
        self.device = lease.device
        self.host = lease.host
        self.store_root = store_root
        self.backend = None
        self._backend_key: tuple | None = None
        self.attestation: dict | None = None  # idle check made before the lease was taken
        self.job_in_flight: str | None = None
        self.job_batches: dict[str, int] = {}
        self.device_thread = DeviceThread(self.device)  # the backend's one thread
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"loader-{self.device}")
        self.next_shard = NextShard(self.loader.submit, self._preload, self._note_next, self._launch_next,
                                    self._drop_next)
        self.buffers = BatchBuffers()
        self._marked: dict | None = None  # the shard record in the lease now
        self.batch_s: float | None = None  # the last device call's seconds: when to ask for the next shard

    # -- backend ------------------------------------------------------------------------------------
    def backend_for(self, backend: str, model: str = "", precision: str = "fp32"):
        key = (backend, model, precision)
        if key != self._backend_key:
            if self.backend is not None:
                self.device_thread.call(self.backend.close)
                self.backend = None
            t0 = time.time()
            b = create_backend(backend, model, self.device, precision)
            self.device_thread.call(b.load)
            self.backend, self._backend_key = b, key
            log.info("loaded backend %s on %s in %.1f s", backend, self.device, time.time() - t0)
            self.state.register_worker(self.host, self.device, self.lease.pid, self._registration(b))
        return self.backend

    def _registration(self, backend) -> dict:
        from workers.versions import device_identity, host_versions
        return {"host": self.host, "device": self.device, "pid": self.lease.pid,
                "started": time.time(), "backend": backend.describe(),
                "attest": self.attestation or attest(self.device),
                "versions": host_versions(), "identity": device_identity(self.device)}

    # -- lease ----------------------------------------------------------------------------------------
    def begin_shard(self, job_id: str, shard: int, batch: int, task_id: str | None = None) -> None:
        while True:
            if not self.lease.held:
                self.lease.acquire(on_previous=lambda rec: give_back(self.state, rec))
            record = {"job": job_id, "shard": shard, "batch": batch, "since": time.time(), "task": task_id}
            if self.lease.mark(record):
                self._marked = record
                return

    def _note_next(self, next_record: dict) -> None:
        """The shard taken one batch early, in the lease beside the running one (the reaper gives both back)."""
        if self._marked is not None and self.lease.held:
            self.lease.mark({**self._marked, "next": next_record})

    def _preload(self, job_id: str, shard: int) -> Preloaded | None:
        """On the loader thread: the next shard's first batch, loaded as run_shard would (same backend only)."""
        status, written, params = self.state.shard_start(job_id, shard)
        if status in FINISHED or written or params is None or self.backend is None \
                or (params.backend, params.model, params.precision) != self._backend_key:
            return None
        planned = plan_shard_batches(self.state.shard_items(job_id, shard), params)
        if not planned:
            return None
        store = TensorStore(self.store_root or params.store or None)
        prepared = _prepare(store, params, planned[0], self.backend, self.buffers)
        return Preloaded([item["id"] for item in planned[0]], prepared, store)

    def _launch_next(self, pre: Preloaded, after: Running) -> Running | None:
        """The next shard's first batch onto the device behind `after` (this shard's last batch), while the lease
        is ours; its shard's task finds it running (`Preloaded.running`)."""
        groups, _, load_s = pre.prepared
        if len(groups) != 1 or not self.lease.held:
            return None
        group, batch = groups[0]
        return Running.start(self, self.backend, group, batch, load_s, 0.0, True, after=after.future)

    def _drop_next(self, pre: Preloaded) -> None:
        """A preloaded shard that will not run here: arrays on the device come back once it has answered (those
        never launched are left to the garbage collector: a backend may still be copying them)."""
        if pre.running is not None:
            images = pre.running.batch.images
            pre.running.future.add_done_callback(lambda _: self.buffers.give(images))

    def check(self) -> None:
        """Before each batch: still our device, and (one HGET) the job was not cancelled meanwhile."""
        if not self.lease.held:
            raise LeaseLost(f"lease on {self.device} lost mid-shard")
        if self.job_in_flight is not None:
            status = self.state.status(self.job_in_flight)
            if status is None or status in FINISHED:
                raise JobStopped(f"job {status or 'unknown'}")

    def next_seq(self, job_id: str) -> int:
        """This worker's batch index within the job: each job (each batch size of a sweep) warms up anew."""
        n = self.job_batches.get(job_id, 0)
        self.job_batches[job_id] = n + 1
        return n

    def close(self) -> None:
        """Close the backend on its thread, then the thread and the loader."""
        if self.backend is not None:
            self.device_thread.call(self.backend.close)
            self.backend = None
        self.device_thread.close()
        self.loader.shutdown(wait=False, cancel_futures=True)

    # -- the task body ---------------------------------------------------------------------------------
    def __call__(self, job_id: str, shard: int, progress: Progress | None = None, task_id: str | None = None) -> dict:
        """Run the shard; `progress(done=, images=, images_per_s=, ...)` is called after every batch; `task_id`
        (the Celery task's) goes into the lease's shard record, where `status` finds the task's progress."""
        status, written, params = self.state.shard_start(job_id, shard)
        if status is None or status in FINISHED or params is None:
            return {"skipped": f"job {status or 'unknown'}", "device": self.device}
        if written:
            return {"skipped": "duplicate: shard already written", "device": self.device}
        self.begin_shard(job_id, shard, params.batch, task_id)
        self.job_in_flight = job_id
        try:
            try:
                backend = self.backend_for(params.backend, params.model, params.precision)
            except BROKER_ERRORS:
                raise
            except Exception as exc:
                self.state.fail(job_id, f"backend {params.backend} cannot run on {self.host}/{self.device}: {exc}")
                return {"error": str(exc), "device": self.device}
            try:
                payload = run_shard(self, backend, params, shard, self.state.shard_items(job_id, shard), progress)
            except LeaseLost:
                raise
            except JobStopped as exc:
                return {"skipped": f"{exc}: shard {shard} abandoned", "device": self.device}
            except BROKER_ERRORS:
                raise  # not the job's fault: the lease gives the shard back (tasks/outage.py rode out what it could)
            except Exception as exc:
                self.state.fail(job_id, f"shard {shard} on {self.host}/{self.device}: {exc.__class__.__name__}: {exc}")
                raise
            outcome, done = self.state.write_result(job_id, shard, payload, self.lease.fence_key, self.lease.fence)
            self.state.record_shard_time(job_id, f"{self.host}/{self.device}", len(payload["image_ids"]),
                                         payload["t_end"] - payload["t_start"])
        finally:
            self.job_in_flight = None
            self.next_shard.release()
            self._marked = None
            if self.lease.held:
                self.lease.mark(None)
        if outcome == "written" and done == self.state.n_shards(job_id) and self.state.claim_reduce(job_id):
            self.state.tasks.reduce(job_id)
        images, seconds = len(payload["image_ids"]), payload["t_end"] - payload["t_start"]
        log.info("shard %d of job %s: %d images, %s", shard, job_id, images, outcome)
        return {"device": f"{self.host}/{self.device}", "shard": shard, "images": images,
                "images_per_s": round(images / seconds, 2) if seconds > 0 else None,
                "unreadable": len(payload["unreadable"]), "outcome": outcome}


def _load(store: TensorStore, params: JobParams, items: list[dict], pixels: bool, reads_images: bool = True):
    """Entries for a planned batch: [(item, entry)], {image id: why unreadable}.

    A backend that reads no image (sim with load=none) gets the geometry planned from the
    annotation's width and height; an image without them is read as usual.
    """
    loaded, unreadable = [], {}
    for item in items:
        if not reads_images and item["w"] > 0 and item["h"] > 0:
            meta = plan_geometry(item["h"], item["w"], params.size_mode, static_size=params.static_size)
            loaded.append((item, StoreEntry(meta, None)))
            continue
        try:
            entry = store.load(Path(params.image_dir) / item["file"], params.size_mode, params.static_size, pixels)
        except ImageReadError as exc:
            unreadable[str(item["id"])] = str(exc)
            continue
        loaded.append((item, entry))
    return loaded, unreadable


def _prepare(store: TensorStore, params: JobParams, items: list[dict], backend, buffers: BatchBuffers):
    """A planned batch made ready for the device, off its critical path: [(group, InferenceBatch)],
    {image id: why unreadable}, seconds spent loading and stacking. Each batch is handed to
    `backend.prefetch`, so a GPU backend copies it to the device while the one before runs."""
    t0 = time.time()
    loaded, unreadable = _load(store, params, items, backend.needs_pixels, backend.reads_images)
    groups = []
    # the annotation's width/height planned the shapes; regroup by the real ones
    for group in plan_batches(loaded, backend.fixed_batch or params.batch,
                              lambda pair: (pair[1].meta.input_h, pair[1].meta.input_w)):
        batch = _batch(params, backend, group, buffers)
        backend.prefetch(batch)
        groups.append((group, batch))
    return groups, unreadable, time.time() - t0


class BatchBuffers:
    """float32 batch arrays handed back once the device has answered, and used again for the next batch of that
    shape. A fresh array (142 MB at batch 8 and 1216) costs its page faults and the kernel's zeroing on every
    batch: about 3 ms an image here, 40% of what a device worker spends loading, and on a new VM each first touch
    is also a fault in the hypervisor (1.5 s for the first batches of four devices at once)."""

    KEEP = 4  # per shape: the batch on the device, the next one ready, the one loading, the next shard's first

    def __init__(self):
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple) -> np.ndarray:
        with self._lock:
            free = self._free.get(shape)
            if free:
                return free.pop()
        return np.empty(shape, dtype=np.float32)

    def give(self, array: np.ndarray | None) -> None:
        """The device is done with this array (never call it for one a backend may still read)."""
        if array is None:
            return
        with self._lock:
            free = self._free.setdefault(array.shape, [])
            if len(free) < self.KEEP:
                free.append(array)


def _stack(group: list, rows: int, buffers: BatchBuffers) -> np.ndarray:
    """float32 [rows, 3, H, W]: each image normalised straight into its row, padded canvases zero."""
    meta = group[0][1].meta
    batch = buffers.take((rows, 3, meta.input_h, meta.input_w))
    for row, (_, entry) in enumerate(group):
        to_network_input(entry.resized, entry.meta, out=batch[row])
    batch[len(group):] = 0
    return batch


def run_shard(runner: ShardRunner, backend, params: JobParams, shard: int, items: list[dict],
              progress: Progress | None = None) -> dict:
    """Every image of the shard through the backend; returns the payload written to Redis.

    The device is kept busy: the next batch is loaded, normalised and stacked while the device runs this one,
    and a batch's bookkeeping (its timing record, its COCO results, the progress) is done while the device
    runs the batch after it. The time the device still waits for tensors is recorded per batch (`wait_s`).
    """
    store = TensorStore(runner.store_root or params.store or None)
    planned = plan_shard_batches(items, params)
    image_ids, unreadable, results = [], {}, []
    t_begin = time.time()
    loader = runner.loader
    pending, ahead, launched = first_batch(runner, store, params, shard, planned, backend)
    running: Running | None = None  # the batch on the device now
    finite = True  # every number the device answered is finite (else the result is written with json: NaN kept)

    def finish(done: Running, last: bool = False) -> None:
        nonlocal finite
        runner.buffers.give(done.batch.images)  # the device has answered: its input array serves a later batch
        results.extend(_finish_batch(runner, backend, params, shard, done))
        finite = finite and bool(np.isfinite(done.outputs[0][:len(done.group)]).all())
        image_ids.extend(item["id"] for item, _ in done.group)
        if progress is not None and not last:  # the last batch's progress would be replaced by the result at once
            count = len(image_ids) + len(unreadable)
            report_progress(progress, done=count, images=len(items),
                            images_per_s=round(count / max(time.time() - t_begin, 1e-6), 2),
                            batch=params.batch, device=runner.device, host=runner.host)

    try:
        for index in range(len(planned)):
            t_wait = time.time()
            groups, bad, load_s = pending.result()
            t_ready = time.time()
            if index + 1 < len(planned):
                pending = loader.submit(_prepare, store, params, planned[index + 1], backend, runner.buffers)
            left_s = None if runner.batch_s is None else (len(planned) - index) * runner.batch_s
            ending = index + 1 == len(planned) or (left_s is not None and left_s <= NEXT_SHARD_LEAD_S)
            unreadable.update(bad)
            for group, batch in groups:
                before, running = running, None
                if before is not None:
                    before.wait()
                    t_wait = before.t_end  # the device was free from then
                runner.check()
                if ending:
                    runner.next_shard.reserve()  # the next shard's first batch loads while this one ends
                if launched is not None:  # on the device since the shard before ended
                    running, launched = launched, None
                else:
                    running = Running.start(runner, backend, group, batch, load_s, max(0.0, t_ready - t_wait), ahead)
                if before is not None:
                    finish(before)
                ahead = False
            if index + 1 == len(planned) and running is not None:
                runner.next_shard.chain_after(running)  # the next shard's first batch may follow it on the device
        if running is not None:
            done, running = running, None
            done.wait()
            finish(done, last=True)
    finally:  # a fault mid-shard: the device ends its calls before anything else runs on it
        for call in (running, launched):
            if call is not None:
                call.future.exception()
    return {"image_ids": image_ids, "unreadable": unreadable, "results": results,
            "finite": finite,
            "device": runner.device, "host": runner.host, "pid": os.getpid(), "fence": runner.lease.fence,
            "t_start": t_begin, "t_end": time.time(),
            "store": {"hits": store.hits, "misses": store.misses, "recomputed": store.recomputed}}


@dataclass
class Preloaded:
    """A shard's first batch loaded while the shard before it ran: its image ids, `_prepare`'s output, its store,
    and its device call once put behind the last batch of the shard before."""

    image_ids: list[int]
    prepared: tuple
    store: TensorStore
    running: Running | None = None


def plan_shard_batches(items: list[dict], params: JobParams) -> list[list[dict]]:
    return plan_batches(items, params.batch, lambda it: input_shape(it, params.size_mode, params.static_size))


def first_batch(runner: ShardRunner, store: TensorStore, params: JobParams, shard: int, planned: list,
                backend) -> tuple[Future | None, bool, Running | None]:
    """The shard's first batch: loading now, or loaded ahead (its store counts then added to this shard's), and
    its device call when it was put behind the shard before's last batch."""
    pre = runner.next_shard.take(params.job_id, shard)
    if pre is not None and (not planned or pre.image_ids != [item["id"] for item in planned[0]]):
        runner.next_shard.drop(pre)
        pre = None
    if not planned:
        return None, False, None
    if pre is not None:
        store.hits, store.misses = store.hits + pre.store.hits, store.misses + pre.store.misses
        store.recomputed += pre.store.recomputed
        done: Future = Future()
        done.set_result(pre.prepared)
        return done, True, pre.running
    return runner.loader.submit(_prepare, store, params, planned[0], backend, runner.buffers), False, None


def report_progress(progress: Progress, **fields) -> None:
    """Progress is for people watching: a failure to send it never stops the shard."""
    try:
        progress(**fields)
    except Exception as exc:  # noqa: BLE001 - logged; the shard goes on
        log.warning("progress not sent: %s", exc)


def _batch(params: JobParams, backend, group: list, buffers: BatchBuffers) -> InferenceBatch:
    """The device call's input: images (padded to the backend's fixed batch), clip sizes, metas, ids."""
    metas = [entry.meta for _, entry in group]
    rows = max(backend.fixed_batch or len(group), len(group))
    images = _stack(group, rows, buffers) if backend.needs_pixels else None
    clip = np.zeros((rows, 2), dtype=np.float32)
    clip[:] = (metas[0].input_h, metas[0].input_w)  # padded canvases: any valid size
    clip[:len(group)] = clip_sizes(metas)
    return InferenceBatch(images=images, clip_hw=clip, metas=metas,
                          image_ids=[item["id"] for item, _ in group], job=params.to_dict())


@dataclass
class Running:
    """A batch handed to the device thread: its call (t_start, t_end, outputs) and what its record needs."""

    future: Future
    group: list
    batch: InferenceBatch
    load_s: float
    wait_s: float
    ahead: bool
    after: Future | None = None  # the call it was queued behind (the shard before's last batch), if it was
    t_start: float = 0.0
    t_end: float = 0.0
    outputs: tuple | None = None

    @classmethod
    def start(cls, runner: ShardRunner, backend, group: list, batch: InferenceBatch, load_s: float, wait_s: float,
              ahead: bool, after: Future | None = None) -> Running:
        """The batch handed to the runner's device thread (queued behind `after`, when given)."""
        return cls(runner.device_thread.submit(_timed, backend.infer, batch), group, batch, load_s, wait_s, ahead,
                   after)

    def wait(self) -> None:
        """Until the device has answered (its exception raised here)."""
        self.t_start, self.t_end, self.outputs = self.future.result()
        if self.after is not None:  # the device was free, waiting for it, from the call before's end
            before = self.after.result()[1] if self.after.exception() is None else self.t_start
            self.wait_s = max(0.0, self.t_start - before)


def _timed(infer, batch: InferenceBatch) -> tuple[float, float, tuple]:
    t_start = time.time()
    out = infer(batch)
    return t_start, time.time(), out


def _finish_batch(runner: ShardRunner, backend, params: JobParams, shard: int, done: Running) -> list[dict]:
    """A finished device call's timing record (`ahead`: its tensors were loaded while the shard before ran) and
    its COCO results."""
    dets, labels = done.outputs
    runner.batch_s = done.t_end - done.t_start
    group = done.group
    if dets.shape[0] < len(group) or dets.shape[1:] != (MAX_DETS, 5) or labels.shape[0] < len(group):
        raise ValueError(f"backend {backend.name} returned dets {dets.shape} labels {labels.shape} "
                         f"for {len(group)} images")
    runner.state.record_batch(params.job_id, {
        "job": params.job_id, "shard": shard, "device": runner.device, "host": runner.host, "pid": os.getpid(),
        "seq": runner.next_seq(params.job_id), "size": len(group), "rows": len(done.batch.clip_hw),
        "t_start": done.t_start, "t_end": done.t_end, "load_s": done.load_s, "wait_s": done.wait_s,
        **({"ahead": True} if done.ahead else {}), **({"chained": True} if done.after is not None else {}),
    })
    out = []
    for j, (item, entry) in enumerate(group):
        out.extend(to_coco_results(dets[j], labels[j], entry.meta, item["id"]))
    return out
