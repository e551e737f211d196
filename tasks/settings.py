"""One settings object per process: the broker, the key prefix, the tensor store, the cluster timings.

An entry point builds it once (its flags over the environment: EVALUATOR_BROKER, EVALUATOR_PREFIX,
EVALUATOR_TLS_CA / _CERT / _KEY) and applies it to the Celery app with `config_from_object` before anything
connects (tasks/app.py `apply`).
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from tasks.keys import Keys, prefix_from_env
from tasks.outage import BROKER_TIMEOUT_S

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
SOCKET_TIMEOUT_S = 15.0  # no command blocks on the server: a reply this late means a dead or silent connection
HEALTH_CHECK_S = 10
BROKER_ENV = "EVALUATOR_BROKER"


def broker_from_env() -> str:
    """The broker URL a process uses when none is given on the command line."""
    return os.environ.get(BROKER_ENV, DEFAULT_BROKER)


TLS_ENV = {"ca": "EVALUATOR_TLS_CA", "cert": "EVALUATOR_TLS_CERT", "key": "EVALUATOR_TLS_KEY"}
TLS_FLAGS = {"ca": "--tls-ca", "cert": "--tls-cert", "key": "--tls-key"}


def uses_tls(url: str) -> bool:
    """Whether a broker URL asks for TLS (`rediss://`)."""
    return urlsplit(url).scheme == "rediss"


@dataclass(frozen=True)
class BrokerTls:
    """The files of a `rediss://` connection: the CA that signed the server's certificate (None: the system's
    CAs), and this client's certificate and key for a server that asks for one (Redis' tls-auth-clients)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def from_env(cls) -> "BrokerTls":
        return cls(**{name: os.environ.get(env) or None for name, env in TLS_ENV.items()})

    @classmethod
    def from_flags(cls, url: str, ca: str | None = None, cert: str | None = None,
                   key: str | None = None) -> "BrokerTls":
        """The files for the broker at `url`, flags over the environment (whose files matter to rediss:// alone).
        ValueError, one line naming the flag or variable: a file that is not there, a certificate without its key,
        a flag given for a plain redis:// broker."""
        given = {"ca": ca, "cert": cert, "key": key}
        if not uses_tls(url):
            flags = [TLS_FLAGS[name] for name, value in given.items() if value]
            if flags:
                raise ValueError(f"TLS files are for a rediss:// broker, not {urlsplit(url).scheme}:// ({flags[0]})")
            return cls()
        files, sources = {}, {}
        for name, env in TLS_ENV.items():
            from_env = not given[name] and os.environ.get(env)
            path, sources[name] = (from_env, env) if from_env else (given[name], TLS_FLAGS[name])
            if path and not os.path.isfile(path):
                raise ValueError(f"TLS file not found: {path} ({sources[name]})")
            files[name] = os.path.abspath(path) if path else None
        if bool(files["cert"]) != bool(files["key"]):
            missing = "key" if files["cert"] else "cert"
            raise ValueError(f"a client certificate needs its key and a key its certificate ({sources[missing]})")
        return cls(**files)

    def ssl_options(self) -> dict:
        """redis-py's ssl_* keywords, which Celery's broker_use_ssl and redis_backend_use_ssl take as they are:
        the server's certificate and host name are always verified."""
        options = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": self.ca, "ssl_certfile": self.cert,
                   "ssl_keyfile": self.key}
        return {k: v for k, v in options.items() if v is not None}


@dataclass(frozen=True)
class ClusterTimings:
    """Lease and failover timings; the worst-case redelivery delay is lease_ttl_s + reap_interval_s."""

    lease_ttl_s: float = 15.0
    heartbeat_s: float = 5.0  # lease_ttl_s / 3
    reap_interval_s: float = 5.0
    # The Redis transport restores unacknowledged messages only after this; failover never waits for it.
    visibility_timeout_s: int = 12 * 3600

    @classmethod
    def with_ttl(cls, lease_ttl_s: float | None) -> "ClusterTimings":
        """Timings scaled to a lease TTL (tests use short ones); None: the defaults."""
        if not lease_ttl_s:
            return TIMINGS
        return cls(lease_ttl_s=lease_ttl_s, heartbeat_s=lease_ttl_s / 3,
                   reap_interval_s=min(5.0, max(0.5, lease_ttl_s / 3)))


TIMINGS = ClusterTimings()


@dataclass(frozen=True)
class Settings:
    """What a process needs to take part in a cluster."""

    broker_url: str = field(default_factory=broker_from_env)
    key_prefix: str = field(default_factory=prefix_from_env)
    store_root: str | None = None  # a worker's own tensor store folder (None: the job's)
    timings: ClusterTimings = TIMINGS
    broker_timeout_s: float = BROKER_TIMEOUT_S  # how long a Redis command of a worker waits through an outage
    tls: BrokerTls = field(default_factory=BrokerTls.from_env)  # used when broker_url is rediss://

    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)

    def with_broker(self, url: str | None) -> "Settings":
        return replace(self, broker_url=url) if url else self


def celery_config(settings: Settings) -> dict:
    """The Celery app's configuration (DESIGN.md section 4) for these settings."""
    transport = {"visibility_timeout": settings.timings.visibility_timeout_s,
                 "global_keyprefix": settings.keys.kombu_prefix}
    # A broker that vanishes without closing the connection (a host gone, a silent link): commands time out
    # and the consumer's BRPOP connection is dropped after brpop_timeout + health_check_interval (kombu 5.7)
    sockets = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": 5.0, "socket_keepalive": True,
               "health_check_interval": HEALTH_CHECK_S}
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.broker_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker waits for its broker as long as it takes
        "broker_transport_options": {**transport, **sockets},
        "result_backend_transport_options": dict(transport),
        "redis_socket_timeout": SOCKET_TIMEOUT_S,
        "redis_socket_connect_timeout": 5.0,
        "redis_socket_keepalive": True,
        "result_expires": 7 * 24 * 3600,
        "task_routes": {
            "evaluator.preprocess": {"queue": "preprocess"},
            "evaluator.infer": {"queue": "infer"},
            "evaluator.reduce": {"queue": "reduce"},
        },
        "worker_hijack_root_logger": False,
        **tls_config(settings),
    }


def tls_config(settings: Settings) -> dict:
    """Celery's TLS settings for a rediss:// broker (the broker and the result backend on it); none otherwise."""
    if not uses_tls(settings.broker_url):
        return {}
    return {"broker_use_ssl": settings.tls.ssl_options(), "redis_backend_use_ssl": settings.tls.ssl_options()}
