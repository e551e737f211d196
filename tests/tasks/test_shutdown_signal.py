"""A worker's shutdown reaches every process that could be riding out an outage, from inside signal handlers."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent("""
    import os, signal, threading, time
    from tasks import outage

    signal.signal(signal.SIGUSR1, lambda *_: outage.stop_riding_out())  # as Celery's SIGTERM handler calls it
    done = threading.Event()

    def storm():
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=storm, daemon=True).start()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        outage.stop_riding_out()  # the main thread inside it when the next signal lands
    done.set()
    print("exited", outage.shutting_down())
""")


def test_stop_riding_out_survives_signals_interrupting_it():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "exited True", out.stderr[-2000:]


def test_a_prefork_child_stops_riding_out_when_its_parent_shuts_down():
    """A pool's children get no SIGTERM of their own: the flag its main process sets must reach them."""
    import multiprocessing

    from tasks import outage
    ctx = multiprocessing.get_context("fork")  # how billiard makes a pool's children
    seen = ctx.Queue()
    started = ctx.Event()

    def child():
        started.set()
        deadline = time.monotonic() + 20
        while not outage.shutting_down() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.put(outage.shutting_down())

    proc = ctx.Process(target=child)
    proc.start()
    try:
        assert started.wait(20)
        outage.stop_riding_out()
        assert seen.get(timeout=20) is True
    finally:
        proc.join(20)
        outage._shutting_down.value = False  # this test process goes on
