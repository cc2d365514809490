"""Fixtures of the security tests: a private Redis with the roles' ACL users.

``acl_redis`` starts a private redis-server (the tests add users to it, which
``FLUSHALL`` would not undo on the shared server) and defines one user per
role from :mod:`wire.acl`, each with a random password. ``as_role`` gives a
client logged in as a role; the admin client stays the default user.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from wire.acl import ROLES, AclRule, role_rule, setuser_args

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
    """Private server; users mtbbs-<role> for each role, per-host agent and reporter users."""
    server = redis_server_factory()
    admin = redis.Redis(port=server.port, socket_timeout=5)
    env = AclRedis(server, admin)
    for role in ROLES:
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
