"""Flower behind one gate: every request needs the basic-auth login, except Flower's own healthcheck ("OK").

Flower checks the login per handler, and some handlers skip it (/metrics, /static, /logout, the 404 page, and
OPTIONS on every path), so the check is made once, where Tornado picks a request's handler, before any of them.
"""
from __future__ import annotations

import atexit
import binascii
import hmac
import signal
from base64 import b64decode

import tornado.web
from flower.app import Flower
from flower.command import apply_env_options, apply_options, extract_settings, print_banner, setup_logging
from flower.command import sigterm_handler
from flower.urls import settings as flower_settings
from flower.views.monitor import Healthcheck
from tornado.options import options as flower_options

OPEN_HANDLERS = (Healthcheck,)  # answers "OK" and nothing else: for load balancers and compose healthchecks


class LoginRequired(tornado.web.RequestHandler):
    """The answer to any request without the login: 401 with a Basic challenge, whatever the path or method."""

    def check_xsrf_cookie(self) -> None:
        """A refused POST says 401 as a GET does (Tornado checks the XSRF cookie before `prepare`)."""

    def prepare(self) -> None:
        self.set_status(401)
        self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        self.finish("login required")


def logged_in(authorization: str, logins: list[str]) -> bool:
    """Whether an Authorization header carries one of the `user:password` logins (compared in constant time)."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme != "Basic":
        return False
    try:
        given = b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return any(hmac.compare_digest(given, login.encode()) for login in logins)


class GatedFlower(Flower):
    """Flower's application whose every handler but the healthcheck is reached only with the login."""

    def get_handler_delegate(self, request, target_class, target_kwargs=None, path_args=None, path_kwargs=None):
        if target_class not in OPEN_HANDLERS and not logged_in(request.headers.get("Authorization", ""),
                                                               self.options.basic_auth or []):
            return super().get_handler_delegate(request, LoginRequired)
        return super().get_handler_delegate(request, target_class, target_kwargs, path_args, path_kwargs)


def serve(capp, argv: list[str]) -> None:
    """Flower's own start-up (`celery flower`: options from FLOWER_* and argv, logging, banner), run with the gated
    application in place of Flower's; returns when it is stopped (SIGTERM, Ctrl-C)."""
    apply_env_options()
    apply_options("flower", argv)
    extract_settings()
    setup_logging()
    app = GatedFlower(capp=capp, options=flower_options, **flower_settings)
    atexit.register(app.stop)
    signal.signal(signal.SIGTERM, sigterm_handler)
    port = app.start_http_server()
    print_banner(capp, "ssl_options" in flower_settings, port)
    try:
        app.start()
    except (KeyboardInterrupt, SystemExit):
        pass
