"""Job parameters: frozen, JSON-friendly, defaults in one place (a process's own settings: tasks/settings.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class JobParams:
    """What one evaluation job runs; travels as JSON in the job hash, never in task messages."""

    job_id: str
    annotation: str  # COCO instances file (absolute path, readable by every worker)
    image_dir: str
    backend: str  # groundtruth | sim:113ms | onnxruntime | torch | ascend
    model: str = ""  # model file for onnxruntime / torch / ascend
    precision: str = "fp32"
    batch: int = 8
    size_mode: str = "static"
    static_size: int = 1216
    shard_size: int = 0  # images per shard; 0 = planned from the device count
    warmup_batches: int = 2  # per worker, excluded from device FPS and latency
    coco_eval: str = "faster-coco-eval"  # or pycocotools, the reference: the same 12 numbers, slower
    store: str = ""  # tensor store folder; "" = no store (every shard preprocesses itself)
    sample: bool = False  # the built-in sample ran: AP means nothing
    sweep: str = ""  # id of the batch sweep this job belongs to ("" = a single job)
    run_dir: str = ""  # the run folder its submit writes (and `resume` writes again)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JobParams":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
