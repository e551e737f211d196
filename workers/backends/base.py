"""The contract every backend keeps, so workers, tests and benchmarks treat them alike."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from model.preprocess import ImageMeta

MAX_DETS = 100


@dataclass
class InferenceBatch:
    """One batch as the worker hands it to a backend; `images` is None when a backend reads no pixels."""

    images: np.ndarray | None  # float32 [B, 3, H, W] (B may exceed len(image_ids): padded canvases)
    clip_hw: np.ndarray  # float32 [B, 2]: (clip_h, clip_w) per row, see ImageMeta
    metas: list[ImageMeta]  # one per real image
    image_ids: list[int]  # one per real image
    job: dict = field(default_factory=dict)  # the job's JSON parameters (annotation path, ...)


class Backend(ABC):
    """Created in the worker process (after any fork); `load` may be slow, `infer` is the device call."""

    name: str = "backend"
    needs_pixels: bool = True  # False: the worker may skip loading tensors
    reads_images: bool = True  # False: the worker reads no file, the geometry comes from the annotation
    fixed_batch: int | None = None  # a static export runs exactly this batch size; short batches are padded

    def load(self) -> None:
        """Create sessions / move weights; called once in the process that runs `infer`."""

    def prefetch(self, batch: InferenceBatch) -> None:
        """Start moving a batch that `infer` will get next toward the device (a GPU backend copies it now).

        Called from the worker's loader thread, ahead of `infer` and while the batch before runs;
        it must not wait for the device's current work. The default does nothing.
        """

    @abstractmethod
    def infer(self, batch: InferenceBatch) -> tuple[np.ndarray, np.ndarray]:
        """dets float32 [B, 100, 5] (x1, y1, x2, y2, score, network-input frame), labels int64 [B, 100].

        Rows past the real detections have score 0 and label -1; rows of padded canvases are ignored.
        """

    def describe(self) -> dict:
        """JSON facts for the report (model file, provider, precision, ...)."""
        return {"backend": self.name}

    def close(self) -> None:
        """Free the device."""


def empty_outputs(batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All-padding outputs: score 0, label -1."""
    return (np.zeros((batch_size, MAX_DETS, 5), dtype=np.float32),
            np.full((batch_size, MAX_DETS), -1, dtype=np.int64))
