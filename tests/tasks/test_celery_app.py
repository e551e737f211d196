"""The Celery app is configured as DESIGN.md section 4 says."""
from __future__ import annotations

from tasks.app import app, configure


def test_settings_json_only_late_ack_prefetch_one_events_on():
    configure("redis://127.0.0.1:1/0")
    c = app.conf
    assert (c.task_serializer, c.result_serializer, list(c.accept_content)) == ("json", "json", ["json"])
    assert c.task_acks_late and c.task_reject_on_worker_lost and c.worker_prefetch_multiplier == 1
    assert c.worker_send_task_events and c.task_send_sent_event and c.broker_connection_retry_on_startup
    assert c.broker_transport_options["visibility_timeout"] >= 3600
    assert c.broker_url == c.result_backend == "redis://127.0.0.1:1/0"


def test_readable_task_names_on_their_queues():
    names = {"evaluator.preprocess", "evaluator.infer", "evaluator.reduce"}
    assert names <= set(app.tasks)
    assert {n: app.conf.task_routes[n]["queue"] for n in names} == {
        "evaluator.preprocess": "preprocess", "evaluator.infer": "infer", "evaluator.reduce": "reduce"}


def test_re_pointing_the_app_sends_to_the_new_redis(redis_server):
    import redis

    from real_processes import fresh_db_url
    from tasks.app import enqueue_reduce
    first, second = fresh_db_url(redis_server), fresh_db_url(redis_server)
    configure(first)
    enqueue_reduce("a")
    configure(second)
    enqueue_reduce("b")
    assert redis.Redis.from_url(first).llen("reduce") == 1
    assert redis.Redis.from_url(second).llen("reduce") == 1
