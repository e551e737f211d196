"""Filling the tensor store ahead of the device workers (CPU pool)."""
from __future__ import annotations

from pathlib import Path

from model.preprocess import ImageReadError
from tasks.state import FINISHED, JobState
from tasks.store import TensorStore


def preprocess_shard(state: JobState, job_id: str, shard: int, store_root: str | None = None) -> dict:
    """Make sure every readable image of the shard has a store entry; unreadable ones are left to the reducer.

    `store_root` overrides the job's store (a worker with a per-host local store).
    """
    status = state.status(job_id)
    if status is None or status in FINISHED:
        return {"skipped": f"job {status or 'unknown'}"}
    params = state.params(job_id)
    root = store_root or params.store
    if not root:
        return {"skipped": "no tensor store"}
    state.note_preprocessing(job_id, shard)
    store = TensorStore(root)
    unreadable = 0
    items = state.shard_items(job_id, shard)
    for item in items:
        try:
            store.load(Path(params.image_dir) / item["file"], params.size_mode, params.static_size, pixels=False)
        except ImageReadError:
            unreadable += 1  # the device worker meets it again and reports it in the shard result
    state.add_pool_counts(job_id, len(items) - unreadable - store.hits, store.hits)
    return {"images": len(items), "hits": store.hits, "misses": store.misses,
            "recomputed": store.recomputed, "unreadable": unreadable}
