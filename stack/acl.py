"""``mtbbs-monitor acl``: print least-privilege Redis ACL users for each role.

The rules come from :mod:`wire.acl`, built from the real key names under the
configured prefix. The output is meant to be piped into ``redis-cli`` (one
``ACL SETUSER`` per line) or, with ``--aclfile``, written to a Redis
``aclfile``. Passwords are read from files and printed only as SHA-256
hashes. Nothing here connects to Redis.

The agent and reporter users exist per BBS host only (``--host``, once per
host); ``--role all`` without a host prints the shared roles alone, and
``--role agent`` or ``--role reporter`` without one is a usage error.

Hook: ``add_acl_command(subparsers)`` adds the ``acl`` sub-command, whose
parser sets ``func=run_acl``; ``run_acl(args)`` returns the exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wire.acl import HOST_ROLES, ROLES, AclRule, aclfile_line, role_rule, setuser_line
from wire.cli import ArgumentParser, add_common_options, guarded, load_config
from wire.config import read_secret_file
from wire.errors import ConfigError

EXAMPLES = """\
examples:
  mtbbs-monitor acl --password-dir /etc/mtbbs/redis-users | redis-cli
  mtbbs-monitor acl --host bbs-01 --host bbs-02 --password-dir /etc/mtbbs/redis-users \
      | redis-cli
  mtbbs-monitor acl --role agent --host bbs-01 --password-file bbs-01.pw
  mtbbs-monitor acl --aclfile --host bbs-01 --password-dir /etc/mtbbs/redis-users > users.acl
"""


def add_acl_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``acl`` to ``subparsers`` (from ``parser.add_subparsers()``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "acl", help="print Redis ACL users for each role",
        description="Print least-privilege Redis ACL users (ACL SETUSER lines, or aclfile "
        "lines) for the agent, reporter, collector, alerter and read-only roles.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(parser)
    parser.set_defaults(func=run_acl)
    return parser


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=(*ROLES, "all"), default="all",
                        help="the role to print (default: all)")
    parser.add_argument("--host", action="append", default=[], metavar="ID",
                        help="a BBS host whose agent and reporter users to print, confined "
                        "to that host's keys (repeatable; required by --role agent and "
                        "--role reporter; without it --role all prints the shared roles)")
    parser.add_argument("--user", metavar="NAME",
                        help="user name, when a single user is printed (default mtbbs-ROLE "
                        "or mtbbs-ROLE-HOST)")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument("--password-file", type=Path, metavar="FILE",
                        help="file whose first line is the password, when a single user is "
                        "printed")
    secret.add_argument("--password-dir", type=Path, metavar="DIR",
                        help="directory holding one file per user name, whose first line is "
                        "that user's password")
    parser.add_argument("--aclfile", action="store_true",
                        help="print 'user ...' lines for a Redis aclfile instead of ACL "
                        "SETUSER commands")
    parser.add_argument("--redis7", action="store_true",
                        help="use Redis 7 read/write key permissions (%%R~, %%W~); "
                        "Redis 6.2 rejects them")
    add_common_options(parser)
    # run_acl reports a role/host mismatch as a usage error of this parser.
    parser.set_defaults(acl_usage_error=parser.error)


def _read_password(path: Path, setting: str) -> str:
    try:
        password = read_secret_file(path, "the password file")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(setting, f"cannot read {path} ({type(exc).__name__})") from None
    if not password:
        raise ConfigError(setting, f"{path} holds no password on its first line")
    return password


def role_host_problem(role: str, hosts: Sequence[str]) -> str | None:
    """Why ``role`` cannot be printed for ``hosts``; None when it can."""
    if role in HOST_ROLES and not hosts:
        return (f"the {role} role is per host: give a host id (--host ID, once per BBS "
                "host)")
    if role not in HOST_ROLES and role != "all" and hosts:
        return f"the {role} role is shared by every host: --host does not apply to it"
    return None


def build_rules(role: str, hosts: Sequence[str], prefix: str,
                user: str | None = None) -> list[AclRule]:
    """The users to print for ``role`` (``all`` for every role).

    A host role gets one user per host in ``hosts``, and none without hosts.
    """
    roles = ROLES if role == "all" else (role,)
    rules: list[AclRule] = []
    for name in roles:
        targets: Sequence[str | None] = hosts if name in HOST_ROLES else [None]
        for host in targets:
            try:
                rules.append(role_rule(name, prefix, host=host, user=user))
            except ValueError as exc:
                raise ConfigError("acl", str(exc)) from None
    return rules


def run_acl(args: argparse.Namespace) -> int:
    """Print the ACL users that ``args`` ask for; the exit code."""
    problem = role_host_problem(args.role, args.host)
    if problem is not None:
        args.acl_usage_error(problem)
    _, redis_settings = load_config(args)
    rules = build_rules(args.role, args.host, redis_settings.prefix)
    if args.role == "all" and not args.host:
        print("note: no agent or reporter users without --host: they exist per BBS host "
              "(add --host ID for each host)", file=sys.stderr)
    if len(rules) > 1 and (args.user or args.password_file):
        raise ConfigError("acl", "--user and --password-file name a single user; choose one "
                          "--role (and at most one --host), or use --password-dir")
    if args.user:
        rules = build_rules(args.role, args.host, redis_settings.prefix, user=args.user)
    lines = []
    for rule in rules:
        password = None
        if args.password_file is not None:
            password = _read_password(args.password_file, "acl.password_file")
        elif args.password_dir is not None:
            candidate = args.password_dir / rule.user
            if candidate.exists():
                password = _read_password(candidate, "acl.password_dir")
        if password is None:
            # resetpass: the user exists but nobody can log in as it yet.
            print(f"note: no password for {rule.user}; it cannot log in until one is set "
                  f"(ACL SETUSER {rule.user} >PASSWORD)", file=sys.stderr)
        lines.append(aclfile_line(rule, password, redis7=args.redis7) if args.aclfile
                     else setuser_line(rule, password, redis7=args.redis7))
    for line in lines:
        print(line)
    return 0


@guarded
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stack.acl``: the same command on its own."""
    parser = ArgumentParser(
        prog="mtbbs-monitor acl",
        description="Print least-privilege Redis ACL users for each role.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_options(parser)
    args = parser.parse_args(argv)
    return run_acl(args)


if __name__ == "__main__":
    sys.exit(main(None))
