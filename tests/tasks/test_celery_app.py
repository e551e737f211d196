"""The Celery app is configured as DESIGN.md section 4 says, and each broker gets its own messages."""
from __future__ import annotations

from tasks.app import app, apply
from tasks.settings import Settings


def test_settings_json_only_late_ack_prefetch_one_events_on():
    apply(Settings(broker_url="redis://127.0.0.1:1/0"))
    c = app.conf
    assert (c.task_serializer, c.result_serializer, list(c.accept_content)) == ("json", "json", ["json"])
    assert c.task_acks_late and c.task_reject_on_worker_lost and c.worker_prefetch_multiplier == 1
    assert c.worker_send_task_events and c.task_send_sent_event and c.broker_connection_retry_on_startup
    assert c.broker_transport_options["visibility_timeout"] == 12 * 3600  # README: 12 h, longer than any shard
    assert c.broker_url == c.result_backend == "redis://127.0.0.1:1/0"
    assert c.broker_transport_options["global_keyprefix"] == "evaluator:"  # kombu's keys under the prefix too


def test_readable_task_names_on_their_queues():
    names = {"evaluator.preprocess", "evaluator.infer", "evaluator.reduce"}
    assert names <= set(app.tasks)
    assert {n: app.conf.task_routes[n]["queue"] for n in names} == {
        "evaluator.preprocess": "preprocess", "evaluator.infer": "infer", "evaluator.reduce": "reduce"}


def test_each_broker_gets_its_own_messages(redis_server):
    import redis

    from real_processes import fresh_db_url
    from tasks.state import JobState
    first, second = fresh_db_url(redis_server), fresh_db_url(redis_server)
    JobState.open(first).tasks.reduce("a")
    JobState.open(second).tasks.reduce("b")
    queue = JobState.open(first).keys.queue("reduce")
    assert redis.Redis.from_url(first).llen(queue) == 1
    assert redis.Redis.from_url(second).llen(queue) == 1
