"""The flags several orchestrator commands take, and the broker connection they open."""
from __future__ import annotations

import argparse

from kombu.utils.url import maybe_sanitize_url

from commandline import UsageError
from tasks.outage import BROKER_TIMEOUT_S, BROKER_UNREACHABLE_EXIT
from tasks.app import apply
from tasks.settings import TLS_ENV, BrokerTls, Settings, uses_tls
from tasks.state import BrokerError, JobState


def add_broker_arg(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    """--broker, and the TLS files for a rediss:// one."""
    p.add_argument("--broker", metavar="URL",
                   help=help_text or "Redis URL of a running cluster, e.g. redis://head:6379/0")
    p.add_argument("--tls-ca", metavar="FILE",
                   help=f"CA certificate that signed a rediss:// broker's (default: ${TLS_ENV['ca']}, else the "
                        "system's CAs)")
    p.add_argument("--tls-cert", metavar="FILE",
                   help=f"this client's certificate, for a broker that asks for one (default: ${TLS_ENV['cert']})")
    p.add_argument("--tls-key", metavar="FILE", help=f"the key of --tls-cert (default: ${TLS_ENV['key']})")


def add_broker_timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-timeout", type=float, default=BROKER_TIMEOUT_S, metavar="S",
                   help=f"wait this long for an unreachable broker before giving up with exit code "
                        f"{BROKER_UNREACHABLE_EXIT} (default {BROKER_TIMEOUT_S:g}); the job stays resumable")


def check_broker_timeout(args) -> float:
    if args.broker_timeout <= 0:
        raise UsageError(f"--broker-timeout must be positive, got {args.broker_timeout:g} (--broker-timeout)")
    return args.broker_timeout


def add_run_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs", help="folder of run folders (default runs)")


def broker_tls(args, url: str | None = None) -> BrokerTls:
    """The TLS files of --tls-ca / --tls-cert / --tls-key over the environment, for the broker at `url` (default
    --broker); one-line error for a missing one."""
    try:
        return BrokerTls.from_flags(url or args.broker or "", args.tls_ca, args.tls_cert, args.tls_key)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def open_state(url: str, tls: BrokerTls | None = None) -> JobState:
    """Job state (and the task sender) on the broker at `url`; one-line error when Redis does not answer, refuses
    the password or the TLS handshake (the password never printed). The Celery app is set to this broker too:
    a task's state (a running shard's progress) is read from its result backend."""
    state = JobState.open(url, tls=tls)
    apply(Settings(tls=state.tls).with_broker(url))
    try:
        state.ping()
    except BrokerError as exc:
        raise UsageError(f"cannot reach the broker: {str(exc).rstrip('.')}{_hint(url, state.tls, str(exc))} "
                         f"({maybe_sanitize_url(url)})") from exc
    return state


def _hint(url: str, tls: BrokerTls, error: str) -> str:
    """What a refused connection most likely means, when the error alone does not say it."""
    if not uses_tls(url) and ("reset" in error or "closed" in error):
        return "; a TLS-only Redis drops plain connections: is it rediss://?"
    if uses_tls(url) and not tls.cert and ("EOF occurred" in error or "CERTIFICATE_REQUIRED" in error):
        return "; a Redis that asks for a client certificate drops connections without one: --tls-cert, --tls-key"
    return ""


def positive_int(flag: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value} ({flag})")
    return value
