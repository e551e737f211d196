"""The next shard's first batch goes on the device right behind this shard's last batch, once both are ready, and
never before this shard's last batch nor after the next shard's task has begun."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from workers.next_shard import INFER_TASK, NextShard


@dataclass
class Loaded:
    shard: int
    running: object = None


class Rig:
    """A NextShard with a loader thread whose preloads wait for `release`, a consumer whose QoS counts, and the
    launches and drops it asks for."""

    def __init__(self):
        self.loader = ThreadPoolExecutor(max_workers=1)
        self.gate = threading.Event()
        self.launched: list[tuple[int, object]] = []
        self.dropped: list[int] = []
        self.next = NextShard(self.loader.submit, self._preload, lambda record: None, self._launch,
                              lambda pre: self.dropped.append(pre.shard))
        qos = SimpleNamespace(increment_eventually=lambda: None, decrement_eventually=lambda: None)
        self.next.on_received(sender=SimpleNamespace(qos=qos, hub=None))

    def _preload(self, job, shard):
        self.gate.wait(5)
        return Loaded(shard)

    def _launch(self, pre, after):
        self.launched.append((pre.shard, after))
        return f"running {pre.shard}"

    def receive(self, shard: int) -> None:
        """This shard's last batch begins: one more message is taken, and its first batch loads."""
        self.next.reserve()
        self.next.on_received(request=SimpleNamespace(name=INFER_TASK, kwargs={"job_id": "j", "shard": shard},
                                                      id=f"t{shard}"))

    def loaded(self) -> None:
        self.gate.set()
        self.loader.submit(lambda: None).result()  # the preload and its callbacks are done


@pytest.mark.parametrize("loaded_first", [True, False], ids=["loaded-before-the-last-batch", "loaded-after"])
def test_the_loaded_batch_follows_this_shard_last_batch_whichever_is_ready_first(loaded_first):
    rig = Rig()
    rig.receive(5)
    if loaded_first:
        rig.loaded()
        assert rig.launched == []  # this shard's last batch is not on the device yet: nothing may go before it
        rig.next.chain_after("last of 4")
    else:
        rig.next.chain_after("last of 4")
        assert rig.launched == []  # not loaded yet
        rig.loaded()
    assert rig.launched == [(5, "last of 4")]
    assert rig.next.take("j", 5).running == "running 5"


def test_nothing_is_chained_once_the_next_task_has_begun():
    rig = Rig()
    rig.receive(5)
    rig.next.chain_after("last of 4")
    done = threading.Thread(target=lambda: rig.next.take("j", 5))
    done.start()  # the task begins while its first batch still loads: it will launch that batch itself
    while rig.next._after is not None:
        pass
    rig.loaded()
    done.join(5)
    assert rig.launched == []
    rig.next.release()
    rig.receive(6)  # the next shard of a shard whose last batch is not yet on the device
    rig.loaded()
    assert rig.launched == []


def test_a_chained_batch_of_a_shard_that_does_not_run_here_is_dropped():
    rig = Rig()
    rig.receive(5)
    rig.loaded()
    rig.next.chain_after("last of 4")
    assert rig.next.take("j", 7) is None  # another shard came instead (5 was skipped: its job ended)
    assert rig.dropped == [5] and rig.launched == [(5, "last of 4")]
