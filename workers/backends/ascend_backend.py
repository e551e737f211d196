"""Runs an om model on one Ascend NPU through ais_bench's `InferSession` (not run on hardware by our tests)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from model.config import MODEL
from workers.backends import BackendUnavailable
from workers.backends.base import MAX_DETS, Backend, InferenceBatch
from workers.backends.om_file import check_om
from workers.npu_host import acl_device_id

log = logging.getLogger("workers.backends.ascend")
INSTALL_HINT = ("install CANN (source /usr/local/Ascend/ascend-toolkit/set_env.sh) and the aclruntime + ais_bench "
                "wheels of Huawei's ait benchmark tool")
DETS_NAMES, LABELS_NAMES = ("dets", "boxes"), ("labels",)
ATC_OUTPUT_NAME = re.compile(r".*?:\d+:(.+)")


def parse_device_id(device: str | int) -> int:
    """`npu:3`, `3` or 3 -> 3 (the host's logical device, the label of lease and report)."""
    text = str(device)
    if text.startswith("npu:"):
        text = text[4:]
    if not text.isdigit():
        raise ValueError(f"bad Ascend device {device!r}: expected npu:N (--device)")
    return int(text)


def to_contract(dets: np.ndarray, labels: np.ndarray, batch_size: int,
                score_thr: float = MODEL.score_thr) -> tuple[np.ndarray, np.ndarray]:
    """An Ascend graph's detections -> dets [B,100,5] float32, labels [B,100] int64 with -1 padding rows.

    Accepts our export's outputs (already [B,100,5] / [B,100]) and the recipe's (`boxes` [100,5] and `labels` [100]
    per image, padding rows of zeros and class 0). A row is real when its score is above the model's threshold
    (mmdet keeps score > 0.05, strictly) and its label is a class index; real rows keep their order, first.
    """
    dets = np.asarray(dets, dtype=np.float32).reshape(batch_size, -1, 5)
    raw_labels = np.asarray(labels).reshape(batch_size, -1)
    if np.issubdtype(raw_labels.dtype, np.floating):  # BatchMultiClassNMS reports classes as floats
        raw_labels = np.rint(raw_labels)
    raw_labels = raw_labels.astype(np.int64)
    out_dets = np.zeros((batch_size, MAX_DETS, 5), dtype=np.float32)
    out_labels = np.full((batch_size, MAX_DETS), -1, dtype=np.int64)
    scores = dets[..., 4]
    real = (scores > score_thr) & np.isfinite(dets).all(-1) & (raw_labels >= 0) & (raw_labels < MODEL.num_classes)
    for b in range(batch_size):
        rows = np.flatnonzero(real[b])[:MAX_DETS]
        out_dets[b, :len(rows)] = dets[b, rows]
        out_labels[b, :len(rows)] = raw_labels[b, rows]
    return out_dets, out_labels


def output_name(name: str) -> str:
    """The ONNX output name in an om output's name: ATC writes `<op>:<index>:<onnx name>` (GE's omg.cc adds the
    top name after `node_name:index`), and an ONNX name may itself hold `::` (`onnx::Cast_12`); a plain name
    is returned as it is."""
    m = ATC_OUTPUT_NAME.fullmatch(name)
    return m.group(1) if m else name


def pick_outputs(names: list[str], outputs: list, batch: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    """dets and labels among an om's outputs: by ONNX name, else by size (dets has 5 values per labels entry)."""
    if len(outputs) < 2:
        raise RuntimeError(f"ais_bench returned {len(outputs)} outputs where the om has {len(names)}: the execute "
                           f"failed on the device (CANN's log under ~/ascend/log says why) ({model})")
    by_name = {output_name(n): o for n, o in zip(names, outputs)}
    dets = next((by_name[n] for n in DETS_NAMES if n in by_name), None)
    labels = next((by_name[n] for n in LABELS_NAMES if n in by_name), None)
    if dets is not None and labels is not None:
        return dets, labels
    sizes = [np.asarray(o).size for o in outputs]
    pairs = [(i, j) for i in range(len(outputs)) for j in range(len(outputs))
             if i != j and sizes[j] and sizes[i] == 5 * sizes[j] and sizes[j] % batch == 0]
    if len(pairs) == 1:
        return outputs[pairs[0][0]], outputs[pairs[0][1]]
    shapes = ", ".join(f"{n} {list(np.asarray(o).shape)}" for n, o in zip(names, outputs))
    raise ValueError(f"cannot tell dets from labels among the om's outputs ({shapes}): name them dets and labels "
                     f"in the ONNX export ({model})")


def import_infer_session():
    """ais_bench's InferSession class, or BackendUnavailable saying what to install."""
    try:
        from ais_bench.infer.interface import InferSession
    except ImportError as exc:
        raise BackendUnavailable(f"the ascend backend needs ais_bench ({exc}): {INSTALL_HINT}") from exc
    return InferSession


class AscendBackend(Backend):
    """One om model on one NPU; the session is created in `load` (in the worker process, after any fork)."""

    name = "ascend"
    needs_pixels = True

    def __init__(self, model_path: str | Path, device: str | int = "npu:0", score_thr: float = MODEL.score_thr):
        self.model_path = str(model_path)
        self.device_index = parse_device_id(device)
        self.acl_device_id: int | None = None
        self.loaded_path: str | None = None
        self.score_thr = score_thr
        self.session = None
        self.input_names: list[str] = []
        self.input_shape: list[int] = []
        self.output_names: list[str] = []

    def load(self) -> None:
        if not Path(self.model_path).is_file():
            raise FileNotFoundError(f"no such om model ({self.model_path})")
        infer_session = import_infer_session()
        self.acl_device_id = acl_device_id(self.device_index)
        self.loaded_path = check_om(self.model_path)
        self.session = infer_session(device_id=self.acl_device_id, model_path=self.loaded_path)
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.input_shape = [int(d) for d in inputs[0].shape]
        if len(self.input_shape) != 4 or self.input_shape[0] <= 0:
            raise ValueError(f"om input {self.input_names[0]} has shape {self.input_shape}, expected a static "
                             f"[N,3,H,W] ({self.model_path})")
        self.fixed_batch = self.input_shape[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        log.info("npu:%d runs as ACL device %d; om outputs %s", self.device_index, self.acl_device_id,
                 ", ".join(self.output_names))

    def _run(self, images: np.ndarray, clip_hw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.fixed_batch
        feeds = [np.ascontiguousarray(images, dtype=np.float32)]
        if len(self.input_names) > 1:
            feeds.append(np.ascontiguousarray(clip_hw, dtype=np.float32))
        if feeds[0].shape[0] < n:  # a short batch: fill with empty canvases, drop their rows after
            pad = n - feeds[0].shape[0]
            feeds = [np.concatenate([f, np.zeros((pad,) + f.shape[1:], f.dtype)]) for f in feeds]
        outputs = self.session.infer(feeds, mode="static")
        dets, labels = pick_outputs(self.output_names, list(outputs or []), n, self.model_path)
        dets, labels = to_contract(dets, labels, n, self.score_thr)
        return dets[:images.shape[0]], labels[:images.shape[0]]

    def infer(self, batch: InferenceBatch) -> tuple[np.ndarray, np.ndarray]:
        if self.session is None:
            raise RuntimeError("AscendBackend.infer before load()")
        images = batch.images
        if tuple(images.shape[1:]) != tuple(self.input_shape[1:]):
            raise ValueError(f"batch of shape {list(images.shape)} does not fit the om input {self.input_shape} "
                             f"({self.model_path})")
        parts = [self._run(images[i:i + self.fixed_batch], batch.clip_hw[i:i + self.fixed_batch])
                 for i in range(0, images.shape[0], self.fixed_batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_path, "loaded_from": self.loaded_path,
                "device": f"npu:{self.device_index}", "acl_device_id": self.acl_device_id,
                "runtime": "ais_bench InferSession", "input_shape": self.input_shape,
                "output_names": self.output_names, "fixed_batch": self.fixed_batch}

    def close(self) -> None:
        if self.session is not None:
            # 2024+ ais_bench frees one session with free_resource (its finalize is a static call that tears
            # down every session of the process); the 2023 release has only the instance's finalize.
            free = getattr(self.session, "free_resource", None) or getattr(self.session, "finalize", None)
            if free is not None:
                free()
            self.session = None
