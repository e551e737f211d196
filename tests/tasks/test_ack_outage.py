"""A late ack that meets a broker outage lands when Redis is back, so the worker's prefetch slot is freed (with
Celery's own Request the failed ack is logged and dropped, and the delivered message holds the slot)."""
from __future__ import annotations

import threading
import time

import pytest
from celery.worker.request import Request

from orchestrator.cluster import RedisServer
from tasks.app import INFER_QUEUE, app
from tasks.outage import AckRidingOut


@pytest.fixture
def broker(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def delivered_request(broker, request_class, conn):
    """An infer message sent and taken off the queue by a consumer channel with prefetch 1, as a worker holds
    one; the request made from it."""
    app.send_task("evaluator.infer", kwargs={"job_id": "j", "shard": 0, "batch": 8}, queue=INFER_QUEUE,
                  connection=conn)
    channel = conn.channel()
    channel.basic_qos(0, 1, False)
    queue = conn.SimpleQueue(INFER_QUEUE, channel=channel)
    message = queue.get(timeout=5)
    assert not channel.qos.can_consume()  # the one prefetch slot is taken until the ack
    # as Celery's strategy makes it: the ack is the message's ack_log_error, connection errors logged
    return request_class(message, on_ack=message.ack_log_error, app=app, task=app.tasks["evaluator.infer"],
                         connection_errors=conn.connection_errors), channel


@pytest.mark.parametrize("request_class, slot_freed", [(AckRidingOut, True), (Request, False)])
def test_an_ack_during_an_outage_frees_the_prefetch_slot_once_redis_is_back(broker, request_class, slot_freed):
    with app.connection_for_write(broker.url) as conn:
        request, channel = delivered_request(broker, request_class, conn)
        broker.stop()  # the ack meets a refused connection
        acked = threading.Thread(target=request.acknowledge)
        acked.start()
        time.sleep(1.0)
        restarted = RedisServer(broker.folder, port=broker.port).start()
        try:
            acked.join(30)
            assert not acked.is_alive() and request.acknowledged
            assert channel.qos.can_consume() is slot_freed
        finally:
            restarted.stop()
