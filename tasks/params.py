"""Job parameters and cluster timings: frozen, JSON-friendly, defaults in one place."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def broker_from_env() -> str:
    """The broker URL a process uses when none is given on the command line."""
    return os.environ.get("EVALUATOR_BROKER", DEFAULT_BROKER)


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


@dataclass(frozen=True)
class ClusterTimings:
    """Lease and failover timings; the worst-case redelivery delay is lease_ttl_s + reap_interval_s."""

    lease_ttl_s: float = 15.0
    heartbeat_s: float = 5.0  # lease_ttl_s / 3
    reap_interval_s: float = 5.0
    # The Redis transport restores unacknowledged messages only after this; failover never waits for it.
    visibility_timeout_s: int = 12 * 3600

    @classmethod
    def with_ttl(cls, lease_ttl_s: float) -> "ClusterTimings":
        """Timings scaled to a lease TTL (tests use short ones)."""
        return cls(lease_ttl_s=lease_ttl_s, heartbeat_s=lease_ttl_s / 3,
                   reap_interval_s=min(5.0, max(0.5, lease_ttl_s / 3)))


TIMINGS = ClusterTimings()
