"""`python -m workers --device cpu:0`: one device worker (solo pool, leased); `--preprocess`: the CPU pool;
`--reduce`: the reducer alone."""
from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys

from typing import Callable

from celery import signals
from kombu.utils.url import maybe_sanitize_url

from commandline import usage_error
from tasks import context
from tasks.app import INFER_QUEUE, PREPROCESS_QUEUE, REDUCE_QUEUE, app, apply
from tasks.context import WorkerContext
from tasks.outage import BROKER_TIMEOUT_S, describe, refused, ride_out_acks_for, stop_riding_out
from tasks.settings import TIMINGS, BrokerTls, ClusterTimings, Settings, broker_from_env
from tasks.state import BrokerError, JobState
from workers.backends import backend_for_model, check_spec
from workers.devices import parse_device

log = logging.getLogger("workers")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m workers",
        description="Start one device worker (holds the device lease, pulls shards from the shared queue) "
                    "or the preprocessing/reducing CPU pool.",
        epilog="examples:\n  python -m workers --device npu:0 --broker redis://head:6379/0 --model model.om\n"
               "  python -m workers --preprocess --broker redis://head:6379/0 --concurrency 8",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--device", help="the device this worker owns: cpu:N, cuda:N or npu:N")
    role.add_argument("--preprocess", action="store_true", help="run the preprocessing and reducer pool (prefork)")
    role.add_argument("--reduce", action="store_true",
                      help="run only the reducer (reduce queue, one process): a service of its own beside the pool")
    p.add_argument("--broker", help="Redis URL (default: $EVALUATOR_BROKER or redis://127.0.0.1:6379/0)")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate that signed a rediss:// broker's "
                                                    "(default: $EVALUATOR_TLS_CA, else the system's CAs)")
    p.add_argument("--tls-cert", metavar="FILE", help="this worker's certificate, for a broker that asks for one "
                                                      "(default: $EVALUATOR_TLS_CERT)")
    p.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert (default: $EVALUATOR_TLS_KEY)")
    p.add_argument("--backend", help="load this backend now (groundtruth, sim:113ms, onnxruntime, torch, ascend); "
                                     "jobs name their own, this only preloads")
    p.add_argument("--model", help="model file to preload (.pth, .onnx, .om)")
    p.add_argument("--precision", default="fp32", help="fp32 or fp16 (backends that support it)")
    p.add_argument("--store", help="this host's tensor store folder (default: the job's)")
    p.add_argument("--lease-ttl", type=float, default=TIMINGS.lease_ttl_s,
                   help=f"device lease TTL in seconds (default {TIMINGS.lease_ttl_s:g}); failover takes TTL + TTL/3")
    p.add_argument("--broker-timeout", type=float, default=BROKER_TIMEOUT_S,
                   help=f"seconds a Redis command waits through a broker outage before the task gives up (default "
                        f"{BROKER_TIMEOUT_S:g}); the worker itself reconnects for as long as it takes")
    p.add_argument("--concurrency", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="processes of the preprocessing pool")
    p.add_argument("--loglevel", default="INFO")
    return p


def celery_argv(queues: list[str], pool: str, name: str, loglevel: str, concurrency: int = 1) -> list[str]:
    return ["worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--queues={','.join(queues)}",
            f"--hostname={name}", "--without-mingle", "--without-gossip", f"--loglevel={loglevel}"]


def refused_by_broker(settings: Settings) -> str | None:
    """One line when the broker refuses this worker for good (password, TLS), before anything starts; a broker
    that is only away is waited for (Celery reconnects, every command rides the outage out)."""
    try:
        JobState.open(settings.broker_url, settings.keys, settings.tls).ping()
    except BrokerError as exc:
        if refused(exc):
            return f"the broker refused this worker: {describe(exc)} ({maybe_sanitize_url(settings.broker_url)})"
        log.warning("broker not reachable yet (%s): waiting for it", describe(exc))
    return None


def open_state(settings: Settings) -> JobState:
    """Job state whose every command waits through a broker outage (up to --broker-timeout)."""
    return JobState.open(settings.broker_url, settings.keys, settings.tls, settings.broker_timeout_s)


def install_context(make: Callable[[], WorkerContext]) -> None:
    """The worker's context, installed when Celery starts it and again in each prefork child (its own client).
    Once the worker shuts down, its Redis commands stop waiting through a broker outage."""
    signals.worker_init.connect(lambda **_: context.install(make()), weak=False)
    signals.worker_process_init.connect(lambda **_: context.install(make()), weak=False)
    signals.worker_shutting_down.connect(lambda **_: stop_riding_out(), weak=False)


def run_device_worker(args, settings: Settings) -> int:
    from workers.devices import attest
    from workers.inference import ShardRunner
    from workers.reaper import Reaper, give_back

    timings = settings.timings
    state = open_state(settings)
    reaper = Reaper(state, timings.reap_interval_s).start()  # heals the cluster even while we wait
    lease = state.device_lease(args.device, timings.lease_ttl_s)
    runner = ShardRunner(state, lease, store_root=settings.store_root)
    runner.attestation = attest(args.device)
    log.info("%s idle before start: %s (%s)", args.device, runner.attestation["idle"], runner.attestation["detail"])
    try:
        lease.acquire(on_previous=lambda rec: give_back(state, rec))
        lease.start_heartbeat(timings.heartbeat_s)
        if args.backend:
            try:
                runner.backend_for(args.backend, args.model or "", args.precision)
            except Exception as exc:
                return usage_error(f"backend {args.backend} cannot run on {args.device}: {exc} (--backend)")
        install_context(lambda: WorkerContext(settings, state, runner))
        signals.task_received.connect(runner.next_shard.on_received, weak=False)  # the next shard, one batch early
        signals.worker_ready.connect(freeze_heap, weak=False)
        name = f"{args.device}-{os.getpid()}@{socket.gethostname()}"
        # threads, one: Celery's consumer loop keeps sending heartbeats while a shard runs (the solo pool runs the
        # task on that loop and sends none: celery#3768), and the backend stays on its own device thread
        app.worker_main(celery_argv([INFER_QUEUE], "threads", name, args.loglevel))
        return 0
    finally:
        context.install(None)
        lease.release()
        reaper.stop()
        runner.close()


def freeze_heap(**_) -> None:
    """What a worker built to start (Celery, kombu, the backend) leaves the garbage collector's view for good.

    Devices of a rack run in step, so their workers allocate in step: each one's full collection over that heap
    (30-40 ms of CPU) came at the same batch on every device, a stall of up to 0.6 s at 32 devices on 2 cores.
    """
    gc.freeze()


def run_preprocess_pool(args, settings: Settings) -> int:
    from tasks.streaming import ReduceFollower
    from workers.reaper import Reaper

    state = open_state(settings)
    reaper = Reaper(state, settings.timings.reap_interval_s, stragglers=True).start()
    follower = ReduceFollower(state).start()  # reads results as they are written: after the last, only COCOeval
    try:
        if args.reduce:
            queues, name, concurrency = [REDUCE_QUEUE], f"reducer-{os.getpid()}@{socket.gethostname()}", 1
        else:
            queues, name = [PREPROCESS_QUEUE, REDUCE_QUEUE], f"cpu-pool-{os.getpid()}@{socket.gethostname()}"
            concurrency = max(1, args.concurrency)
        install_context(lambda: WorkerContext(settings, open_state(settings)))
        signals.worker_ready.connect(freeze_heap, weak=False)
        app.worker_main(celery_argv(queues, "prefork", name, args.loglevel, concurrency))
        return 0
    finally:
        follower.stop()
        reaper.stop()


def check_npu(index: int) -> None:
    """ValueError (one line) when `npu:index` is of a kind this model cannot use or is not visible to this process."""
    from workers import npu_host
    reason = npu_host.unsupported(index)
    if reason:
        raise ValueError(f"npu:{index}: {reason} (--device)")
    npu_host.acl_device_id(index)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.device:
            kind, index = parse_device(args.device)
            if kind == "npu":
                check_npu(index)
        if args.model and not args.backend:
            args.backend = backend_for_model(args.model)
        if args.backend:
            check_spec(args.backend, args.model or "")
        if args.model and not os.path.isfile(args.model):
            raise ValueError(f"model file not found ({args.model})")
        if args.lease_ttl <= 0:
            raise ValueError("the lease TTL must be positive (--lease-ttl)")
        if args.broker_timeout <= 0:
            raise ValueError("the broker timeout must be positive (--broker-timeout)")
        tls = BrokerTls.from_flags(args.broker or broker_from_env(), args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        return usage_error(exc)
    timings = TIMINGS if args.lease_ttl == TIMINGS.lease_ttl_s else ClusterTimings.with_ttl(args.lease_ttl)
    settings = apply(Settings(store_root=os.path.abspath(args.store) if args.store else None,
                              timings=timings, broker_timeout_s=args.broker_timeout, tls=tls).with_broker(args.broker))
    refusal = refused_by_broker(settings)
    if refusal:
        return usage_error(refusal)
    ride_out_acks_for(settings.broker_timeout_s)
    if args.device:
        return run_device_worker(args, settings)
    return run_preprocess_pool(args, settings)


if __name__ == "__main__":
    sys.exit(main())
