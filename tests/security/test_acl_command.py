"""``mtbbs-monitor acl``: what it prints, and that a real Redis takes it."""

from __future__ import annotations

import argparse
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from stack.acl import add_acl_command, main
from wire.cli import ArgumentParser


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage error, exit 3 by wire.cli
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_without_hosts_the_shared_roles_only(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys)
    assert code == 0
    users = [line.split()[2] for line in lines]
    assert users == ["mtbbs-collector", "mtbbs-alerter", "mtbbs-readonly"]
    assert all(line.startswith("ACL SETUSER ") and " resetpass " in line for line in lines)
    assert "cannot log in" in err
    assert "no agent or reporter users without --host" in err


@pytest.mark.parametrize("role", ["agent", "reporter"])
def test_a_host_role_without_a_host_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                     role: str) -> None:
    code, lines, err = run(capsys, "--role", role)
    assert code == 3
    assert lines == []
    assert f"the {role} role is per host: give a host id" in err
    assert "--help" in err and "Traceback" not in err


def test_a_shared_role_with_a_host_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "--role", "collector", "--host", "bbs-01")
    assert code == 3
    assert lines == []
    assert "shared" in err


def test_per_host_agents_and_password_dir(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    (tmp_path / "mtbbs-agent-bbs-01").write_text("agent-one-password\n")
    (tmp_path / "mtbbs-collector").write_text("collector-password\n")
    code, lines, err = run(capsys, "--host", "bbs-01", "--host", "bbs-02",
                           "--password-dir", str(tmp_path))
    assert code == 0
    users = [line.split()[2] for line in lines]
    assert users == ["mtbbs-agent-bbs-01", "mtbbs-agent-bbs-02", "mtbbs-reporter-bbs-01",
                     "mtbbs-reporter-bbs-02", "mtbbs-collector", "mtbbs-alerter",
                     "mtbbs-readonly"]
    text = "\n".join(lines)
    assert "agent-one-password" not in text and "collector-password" not in text
    assert "#" + hashlib.sha256(b"agent-one-password").hexdigest() in lines[0]
    assert "~mtbbs:host:bbs-01:sessions" in lines[0]
    assert "~mtbbs:{bbs-01}:reports" in lines[0] and "bbs-02" not in lines[0]
    assert "mtbbs-agent-bbs-02" in err  # no password file for it


def test_single_user_with_password_file_and_prefix(capsys: pytest.CaptureFixture[str],
                                                   password_file: Any) -> None:
    path = password_file("readonly-password-123")
    code, lines, _ = run(capsys, "--role", "readonly", "--user", "nagios", "--password-file",
                         str(path), "--prefix", "fleet2:", "--aclfile")
    assert code == 0
    assert len(lines) == 1
    assert lines[0].startswith("user nagios on #")
    assert "~fleet2:*" in lines[0]
    assert "readonly-password-123" not in lines[0]


def test_redis7_form(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "--role", "agent", "--host", "bbs-01", "--redis7")
    assert code == 0
    assert "%W~mtbbs:{bbs-01}:reports" in lines[0]
    assert "%W~mtbbs:{bbs-01}:sessions" in lines[0]


@pytest.mark.parametrize("argv", [
    ["--user", "x"],  # several users printed
    ["--role", "agent", "--host", "a", "--host", "b", "--user", "x"],
    ["--role", "root"],
    ["--role", "agent", "--host", "bad host!"],
    ["--role", "agent", "--host", "a", "--password-file", "/nonexistent/pw"],
])
def test_bad_usage_exits_3_without_traceback(capsys: pytest.CaptureFixture[str],
                                             argv: list[str]) -> None:
    code, lines, err = run(capsys, *argv)
    assert code == 3
    assert lines == []
    assert "Traceback" not in err and err.strip()


def test_empty_password_file_refused(capsys: pytest.CaptureFixture[str],
                                     password_file: Any) -> None:
    code, _, err = run(capsys, "--role", "agent", "--host", "bbs-01", "--password-file",
                       str(password_file("")))
    assert code == 3
    assert "no password" in err


def test_hook_into_a_parent_parser(capsys: pytest.CaptureFixture[str]) -> None:
    parent = ArgumentParser(prog="mtbbs-monitor")
    sub = parent.add_subparsers(dest="command")
    add_acl_command(sub)
    args = parent.parse_args(["acl", "--role", "collector"])
    assert isinstance(args, argparse.Namespace)
    assert args.func(args) == 0
    assert capsys.readouterr().out.startswith("ACL SETUSER mtbbs-collector ")


def test_output_piped_into_redis_cli_creates_working_users(
        capsys: pytest.CaptureFixture[str], redis_server_factory: Any, tmp_path: Path) -> None:
    (tmp_path / "mtbbs-readonly").write_text("reader-password-0001\n")
    (tmp_path / "mtbbs-agent-bbs-01").write_text("agent-password-0001\n")
    code, lines, _ = run(capsys, "--host", "bbs-01", "--password-dir", str(tmp_path))
    assert code == 0
    server = redis_server_factory()
    result = subprocess.run([server.cli, "-p", str(server.port)],
                            input=("\n".join(lines) + "\n").encode(), capture_output=True,
                            timeout=30, check=True)
    assert result.stdout.decode().split() == ["OK"] * len(lines)
    reader = redis.Redis(port=server.port, username="mtbbs-readonly",
                         password="reader-password-0001")
    assert reader.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.set("mtbbs:x", "1")
    agent = redis.Redis(port=server.port, username="mtbbs-agent-bbs-01",
                        password="agent-password-0001")
    agent.xadd("mtbbs:{bbs-01}:reports", {"m": b"x"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        agent.xadd("mtbbs:{bbs-02}:reports", {"m": b"x"})
