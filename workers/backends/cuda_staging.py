"""Host-to-device copies of the torch backend on cuda:N: pinned host buffers, a copy stream, events.

A slot holds one batch: its float32 pixels in page-locked host memory and on the device, and its
clip sizes. `stage` fills a free slot and starts a non-blocking copy on the copy stream; it may
run ahead (`prefetch`, called from the worker's loader thread while the device runs the batch
before), so the copy overlaps the computation. `take` hands a staged slot to the compute stream,
which waits for the copy's event (the host does not wait); `release` records on the compute stream
that the slot is free once the work queued so far is done. Every reuse of a slot waits for those
events, so no call order can overwrite a buffer that is still being copied or read.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

MAX_AHEAD = 2  # staged batches waiting for `take`; a newer prefetch evicts the oldest
MAX_SLOTS = 6  # buffers kept across shapes (mmdet mode has many); the least recently freed go first


@dataclass(eq=False)
class Slot:
    """One batch's buffers; `key` is the numpy array it was staged from (matched by identity)."""

    shape: tuple
    host_images: torch.Tensor  # pinned
    host_clip: torch.Tensor  # pinned
    images: torch.Tensor  # on the device
    clip_hw: torch.Tensor
    copied: torch.cuda.Event = field(default_factory=torch.cuda.Event)
    free: torch.cuda.Event = field(default_factory=torch.cuda.Event)
    key: object = None


class CudaStaging:
    """Pinned, double-buffered batch copies to one CUDA device; thread-safe between one prefetcher and `take`."""

    def __init__(self, device: torch.device):
        self.device = device
        self.copy_stream = torch.cuda.Stream(device)
        self._lock = threading.Lock()
        self._free: list[Slot] = []  # least recently freed first
        self._staged: list[Slot] = []  # prefetched, oldest first
        self._slots = 0
        self.prefetched = 0  # batches whose copy was started ahead, and then used

    def _allocate(self, shape: tuple) -> Slot:
        images_shape, clip_shape = shape
        with torch.cuda.device(self.device):
            return Slot(shape,
                        torch.empty(images_shape, dtype=torch.float32, pin_memory=True),
                        torch.empty(clip_shape, dtype=torch.float32, pin_memory=True),
                        torch.empty(images_shape, dtype=torch.float32, device=self.device),
                        torch.empty(clip_shape, dtype=torch.float32, device=self.device))

    def _slot(self, shape: tuple) -> Slot:
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i].shape == shape:
                    return self._free.pop(i)
            dropped = self._free.pop(0) if self._slots >= MAX_SLOTS and self._free else None
            self._slots += 1 - (dropped is not None)
        if dropped is not None:  # its memory goes back to torch's caching allocators once nothing uses it
            dropped.copied.synchronize()
            dropped.free.synchronize()
        return self._allocate(shape)

    def stage(self, images: np.ndarray, clip_hw: np.ndarray) -> Slot:
        """Copy a batch into a free slot and start its host-to-device copy (non-blocking, copy stream)."""
        slot = self._slot((tuple(images.shape), tuple(clip_hw.shape)))
        slot.copied.synchronize()  # the previous copy out of these host buffers has finished
        np.copyto(slot.host_images.numpy(), images, casting="same_kind")
        np.copyto(slot.host_clip.numpy(), clip_hw, casting="same_kind")
        with torch.cuda.device(self.device), torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(slot.free)  # the work that last read the device buffers has finished
            slot.images.copy_(slot.host_images, non_blocking=True)
            slot.clip_hw.copy_(slot.host_clip, non_blocking=True)
            slot.copied.record(self.copy_stream)
        slot.key = images
        return slot

    def prefetch(self, images: np.ndarray, clip_hw: np.ndarray) -> None:
        """Stage a batch that `take` will ask for later (any thread; blocks only on host copies)."""
        slot = self.stage(images, clip_hw)
        with self._lock:
            self._staged.append(slot)
            evicted = self._staged[:-MAX_AHEAD]
            del self._staged[:-MAX_AHEAD]
            self._free.extend(evicted)

    def take(self, images: np.ndarray, clip_hw: np.ndarray) -> Slot:
        """The slot holding this batch (prefetched, or staged now); the compute stream waits for its copy."""
        with self._lock:
            index = next((i for i, s in enumerate(self._staged) if s.key is images), None)
            slot = None
            if index is not None:
                slot = self._staged[index]
                self._free.extend(self._staged[:index])  # staged before it and never asked for: stale
                del self._staged[:index + 1]
        if slot is not None and np.array_equal(slot.host_clip.numpy(), clip_hw):
            self.prefetched += 1
        else:
            if slot is not None:  # same pixels, other clip sizes: stage afresh
                self.release(slot)
            slot = self.stage(images, clip_hw)
        slot.key = None
        torch.cuda.current_stream(self.device).wait_event(slot.copied)
        return slot

    def release(self, slot: Slot) -> None:
        """Free the slot after the work queued on the compute stream so far (call once the forward is queued)."""
        slot.free.record(torch.cuda.current_stream(self.device))
        with self._lock:
            self._free.append(slot)

    def close(self) -> None:
        torch.cuda.synchronize(self.device)
        with self._lock:
            self._free.clear()
            self._staged.clear()
            self._slots = 0
