"""The exporter's HTTP server: ``/metrics``, the web page, its JSON API and its files.

One WSGI application routes every path: ``/metrics`` to prometheus_client's
own WSGI app, ``/``, ``/host/<id>``, ``/api/fleet``, ``/api/host/<id>`` and
``/static/<file>`` to the web page. It only reads (GET and HEAD); every
answer carries a Content-Security-Policy that allows nothing but this
server's own files, so no inline script can run even if a text from Redis
were ever left unescaped.

The door: the server listens on loopback by default. :func:`check_exposure`
refuses another address unless HTTP basic auth guards it (the password read
from a file) or the sysop said with ``open`` that it is meant to be open.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from importlib import resources
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis

from collector.settings import CollectorSettings
from collector.web import pages
from collector.web.data import read_fleet_page, read_host_page
from collector.web.i18n import language
from wire.keys import KeySpace

logger = logging.getLogger(__name__)

# Nothing but this server's own files: no inline script or style, no
# plugin, no framing by another site, no form posting anywhere.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
REALM = "mtbbs-monitor"
HTML = "text/html; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ExposureError(Exception):
    """Serving on this address would expose the fleet without the sysop saying so."""


def is_loopback(bind: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if bind.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(bind: str, password: str | None, open_: bool) -> None:
    """Raise :class:`ExposureError` for a non-loopback bind without auth or ``open``."""
    if is_loopback(bind) or password is not None or open_:
        return
    raise ExposureError(
        f"refusing to serve the fleet on {bind} without a password: pass --password-file "
        "(HTTP basic auth) or --open if it is meant to be reachable by anyone who can reach it")


def read_password(path: Any) -> str:
    """The first line of the password file (an empty password is refused)."""
    from pathlib import Path

    from wire.config import warn_if_exposed
    from wire.errors import ConfigError

    file = Path(path)
    warn_if_exposed(file, "the exporter's password file")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("exporter.password_file",
                          f"cannot read {file} ({type(exc).__name__})") from None
    password = lines[0].strip() if lines else ""
    if not password:
        raise ConfigError("exporter.password_file", f"{file} holds no password on its first line")
    return password


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the installed package."""
    files = {}
    for entry in resources.files("collector.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


class WebApp:
    """The WSGI application of the exporter's port."""

    def __init__(self, client: Any, keys: KeySpace, settings: CollectorSettings,
                 metrics_app: WsgiApp, password: str | None = None) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.metrics_app = metrics_app
        self.password = password
        self.static = _static_files()

    # -- plumbing ----------------------------------------------------------
    def _authorized(self, environ: dict[str, Any]) -> bool:
        if self.password is None:
            return True
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Any user name: the password is the secret.
        _, _, given = decoded.partition(":")
        return hmac.compare_digest(given.encode(), self.password.encode())

    @staticmethod
    def _answer(start_response: StartResponse, status: str, body: bytes, content_type: str,
                extra: list[tuple[str, str]] | None = None, head: bool = False,
                cache: str = "no-store") -> list[bytes]:
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))),
                   ("Cache-Control", cache), *SECURITY_HEADERS, *(extra or [])]
        start_response(status, headers)
        return [] if head else [body]

    def _json(self, start_response: StartResponse, status: str, document: Any,
              head: bool) -> list[bytes]:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        return self._answer(start_response, status, body, JSON_TYPE, head=head)

    def _html(self, start_response: StartResponse, status: str, text: str,
              head: bool) -> list[bytes]:
        return self._answer(start_response, status, text.encode(), HTML, head=head,
                            extra=[("Vary", "Accept-Language")])

    # -- routing -----------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        if not self._authorized(environ):
            return self._answer(start_response, "401 Unauthorized", b"authorization required\n",
                                "text/plain; charset=utf-8",
                                [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
        if method not in ("GET", "HEAD"):
            return self._answer(start_response, "405 Method Not Allowed", b"read-only\n",
                                "text/plain; charset=utf-8", [("Allow", "GET, HEAD")])
        head = method == "HEAD"
        if path == "/metrics":
            return self.metrics_app(environ, start_response)
        lang = language(environ.get("HTTP_ACCEPT_LANGUAGE"))
        if path.startswith("/static/"):
            found = self.static.get(path[len("/static/"):])
            if found is None:
                return self._answer(start_response, "404 Not Found", b"not found\n",
                                    "text/plain; charset=utf-8", head=head)
            return self._answer(start_response, "200 OK", found[0], found[1], head=head,
                                cache="max-age=300")
        try:
            return self._route(path, lang, start_response, head)
        except (redis.RedisError, OSError) as exc:
            # Only the kind of failure is shown: a message may name addresses.
            reason = type(exc).__name__
            logger.warning("web: cannot read Redis (%s: %s)", reason, exc)
            if path.startswith("/api/"):
                return self._json(start_response, "503 Service Unavailable",
                                  {"error": "redis", "detail": f"cannot read Redis ({reason})"},
                                  head)
            # Every page shows the banner in the fleet page's frame, which
            # the script fills once Redis answers again.
            return self._html(start_response, "503 Service Unavailable",
                              pages.fleet_page(lang, None, reason), head)

    def _route(self, path: str, lang: str, start_response: StartResponse,
               head: bool) -> list[bytes]:
        if path == "/":
            fleet = read_fleet_page(self.client, self.keys, self.settings)
            return self._html(start_response, "200 OK", pages.fleet_page(lang, fleet), head)
        if path == "/api/fleet":
            fleet = read_fleet_page(self.client, self.keys, self.settings)
            return self._json(start_response, "200 OK", pages.fleet_json(fleet), head)
        for prefix, api in (("/host/", False), ("/api/host/", True)):
            if path.startswith(prefix):
                host = unquote(path[len(prefix):])
                page = read_host_page(self.client, self.keys, self.settings, host)
                if page is None:
                    if api:
                        return self._json(start_response, "404 Not Found",
                                          {"error": "unknown host", "host": host}, head)
                    return self._html(start_response, "404 Not Found",
                                      pages.not_found_page(lang, host), head)
                if api:
                    return self._json(start_response, "200 OK", page, head)
                return self._html(start_response, "200 OK", pages.host_page(lang, page), head)
        return self._answer(start_response, "404 Not Found", b"not found\n",
                            "text/plain; charset=utf-8", head=head)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow Redis read never blocks a scrape."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Requests logged at debug level rather than on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("web: %s %s", self.address_string(), format % args)


def start(app: WsgiApp, bind: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``app`` on ``bind:port`` in a daemon thread; the server and its thread."""
    server_class: type[WSGIServer] = _ThreadingServer
    if ":" in bind:
        class _ThreadingServer6(_ThreadingServer):
            address_family = socket.AF_INET6

        server_class = _ThreadingServer6
    server = make_server(bind.strip("[]"), port, app, server_class=server_class,
                         handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="exporter-http", daemon=True)
    thread.start()
    return server, thread
