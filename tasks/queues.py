"""What waits in the broker's queues: the queued tasks of a job, read and removed without a worker.

Kombu's Redis transport keeps a queue as one list per priority step (`infer`, `infer\\x06\\x166`, ...),
each message a JSON envelope whose body is base64 JSON `[args, kwargs, embed]`. `cancel` removes a
job's messages from these lists (LREM of the exact bytes: a message a worker already popped is
simply not found), and `resume` reads them so that it never enqueues a shard twice.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import redis

PRIORITY_SEP = "\x06\x16"  # kombu.transport.redis: queue name + sep + priority step
PRIORITY_STEPS = range(10)


@dataclass(frozen=True)
class QueuedTask:
    """One message still in a queue list."""

    key: str  # the Redis list it sits in
    raw: str  # its exact bytes (what LREM needs)
    task_id: str
    name: str
    kwargs: dict


def queue_keys(queue: str) -> list[str]:
    """The list keys of a queue, one per priority step (most do not exist)."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS if step]


def _decode(key: str, raw: str) -> QueuedTask | None:
    try:
        envelope = json.loads(raw)
        headers = envelope.get("headers") or {}
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        _args, kwargs, _embed = json.loads(body)
        return QueuedTask(key, raw, str(headers.get("id", "")), str(headers.get("task", "")), kwargs or {})
    except (ValueError, KeyError, TypeError):
        return None  # not one of ours: left alone


def queued_tasks(r: redis.Redis, queues: list[str], job_id: str | None = None) -> list[QueuedTask]:
    """Messages waiting in `queues` (every priority), optionally only those of `job_id`."""
    found = []
    for queue in queues:
        for key in queue_keys(queue):
            for raw in r.lrange(key, 0, -1):
                task = _decode(key, raw if isinstance(raw, str) else raw.decode())
                if task and (job_id is None or task.kwargs.get("job_id") == job_id):
                    found.append(task)
    return found


def remove_queued(r: redis.Redis, tasks: list[QueuedTask]) -> int:
    """Take these messages out of their lists; returns how many were still there."""
    with r.pipeline(transaction=False) as p:
        for task in tasks:
            p.lrem(task.key, 1, task.raw)
        return sum(int(n) for n in p.execute())
