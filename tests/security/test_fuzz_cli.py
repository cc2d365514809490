"""Fuzzing the command lines: arbitrary arguments -> an exit code, never a traceback.

Each console command's ``main(argv)`` runs in-process with arguments drawn
from its own argparse parser (sub-commands, options, values of the right
and the wrong type, junk tokens) while Redis is unreachable. The exit code
must be one of 0-3 (the Nagios scale the project uses everywhere) and
nothing may print a traceback. Invocations that would run a daemon forever
are made bounded (``run --once``, ``worker --burst``, ``watch --once``,
``--init-only``) or left out (``collector exporter``, ``up``); paths
point into a scratch directory and host names at loopback, so nothing leaves
the test's directory or the machine. A few run as real processes too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

UNREACHABLE = "redis://127.0.0.1:1/0"


@dataclass(frozen=True)
class Command:
    """A console command, how to get its parser, and how to keep it bounded."""

    script: str
    module: str
    parser: str = "build_parser"
    # sub-command path -> tokens appended so that it returns (e.g. --once)
    bounded: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    # sub-command paths never run (they serve forever by design)
    excluded: frozenset[tuple[str, ...]] = frozenset()
    always: tuple[str, ...] = ()


COMMANDS = [
    Command("mtbbs-health-check", "agent.healthcheck_cli"),
    Command("mtbbs-agent", "agent.cli", bounded={("run",): ("--once", "--no-probe")}),
    Command("mtbbs-collector", "collector.cli", bounded={("run",): ("--once",)},
            excluded=frozenset({("exporter",)})),
    Command("mtbbs-alerter", "alerter.cli", parser="_parser",
            bounded={("worker",): ("--burst",)}),
    Command("mtbbs-monitor", "stack.cli", bounded={("watch",): ("--once",)},
            excluded=frozenset({("up",)})),
    Command("mtbbs-demo-bbs", "demobbs.server", always=("--init-only",)),
]


def load(command: Command) -> tuple[Callable[[Sequence[str] | None], int],
                                    argparse.ArgumentParser]:
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        pytest.skip(f"{command.module} is not written yet ({exc})")
    return module.main, getattr(module, command.parser)()


# -- arguments drawn from the parser --------------------------------------------

PATHLIKE = ("config", "spool", "db", "data_dir", "pidfile", "password_file", "password_dir",
            "rules", "file", "dir", "path", "output", "csv")
HOSTLIKE = ("bind", "probe_host", "address", "smtp")


def paths() -> st.SearchStrategy[str]:
    """Relative paths inside the scratch directory: missing, a dir, junk, empty."""
    return st.sampled_from(["missing.file", "scratch-dir", "junk.bin", "empty.txt",
                            "scratch-dir/new.db", "", ".", "junk.bin/below"])


def value_for(action: argparse.Action) -> st.SearchStrategy[str]:
    junk = st.text(min_size=1, max_size=12) | st.sampled_from(
        ["-1", "0", "nan", "inf", "1e999", "-", "--", "\x00", "💥", "9" * 30])
    dest = action.dest.lower()
    if action.choices:
        return st.sampled_from([str(c) for c in action.choices]) | junk
    if dest == "redis_url":
        return st.sampled_from([UNREACHABLE, "rediss://127.0.0.1:1/0", "unix:///nonexistent",
                                "http://127.0.0.1:1/", "redis://", "redis://127.0.0.1:1/99x"])
    if dest == "log_level":
        return st.sampled_from(["INFO", "WARNING", "error", "bogus", ""])
    if any(word in dest for word in HOSTLIKE):
        return st.sampled_from(["127.0.0.1", "::1", "", "localhost"])
    if any(word in dest for word in PATHLIKE):
        return paths()
    if dest == "timeout":
        # KNOWN BUG, see test_status_with_a_tiny_timeout_answers_unknown: a
        # timeout under a millisecond fires before collector status is ready
        # for it. Drop this floor when that test passes.
        return (st.floats(min_value=1e-3, max_value=1e6).map(str)
                | st.sampled_from(["0", "-1", "nan", "x"]))
    if action.type in (int, float):
        return (st.integers(-5, 10**6).map(str) | st.floats(allow_nan=True).map(str)
                | st.sampled_from(["1", "2323", "0.5"]) | junk)
    return st.text(min_size=1, max_size=20) | junk


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "debug")
            and not isinstance(a, argparse._SubParsersAction)]


@st.composite
def argv_for(draw: st.DrawFn, command: Command,
             parser: argparse.ArgumentParser) -> list[str]:
    path: tuple[str, ...] = ()
    current = parser
    while subs := subparsers(current):
        name = draw(st.sampled_from(sorted(subs)))
        if path + (name,) in command.excluded:
            name = draw(st.sampled_from([n for n in sorted(subs)
                                         if path + (n,) not in command.excluded]))
        path += (name,)
        current = subs[name]
    argv = list(path)
    for action in draw(st.lists(st.sampled_from(options(current)), max_size=6)
                       if options(current) else st.just([])):
        flag = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(flag)
        else:
            argv += [flag, draw(value_for(action))]
    positionals = [a for a in current._actions if not a.option_strings]
    for action in positionals:
        if not isinstance(action, argparse._SubParsersAction) and draw(st.booleans()) is not False:
            argv.append(draw(value_for(action)))
    argv += list(command.bounded.get(path, ())) + list(command.always)
    return argv


# -- running main() in-process ---------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with the files the path strategy names; Redis unreachable."""
    (tmp_path / "scratch-dir").mkdir()
    (tmp_path / "junk.bin").write_bytes(b"\x00\xffnot toml [[[\n")
    (tmp_path / "empty.txt").write_text("")
    for name in [k for k in os.environ if k.startswith("MTBBS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MTBBS_REDIS_URL", UNREACHABLE)
    monkeypatch.setenv("MTBBS_REDIS_SOCKET_TIMEOUT", "1")
    monkeypatch.chdir(tmp_path)
    yield tmp_path


class Tracebacks(logging.Handler):
    """Collects log records that would print a traceback at the default level."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


def run_main(main: Callable[[Sequence[str] | None], int], argv: list[str]) -> tuple[int, str]:
    """main(argv) -> (exit code, stderr text), restoring logging and signal handlers."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_signals = {s: signal.getsignal(s)
                     for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    saved_timer = signal.getitimer(signal.ITIMER_REAL)
    catcher = Tracebacks()
    root.addHandler(catcher)
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 3)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for number, handler in saved_signals.items():
            signal.signal(number, handler)
        signal.setitimer(signal.ITIMER_REAL, *saved_timer)
    text = err.getvalue()
    for record in catcher.records:
        text += f"\n[logged with traceback] {record.name}: {record.getMessage()}"
    return int(code), text


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.script)
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_arbitrary_arguments(cmd: Command, scratch: Path, data: st.DataObject) -> None:
    main, parser = load(cmd)
    argv = data.draw(argv_for(cmd, parser), label="argv")
    code, stderr = run_main(main, argv)
    assert code in (0, 1, 2, 3), (argv, code, stderr[-2000:])
    assert "Traceback" not in stderr, (argv, stderr[-3000:])
    assert "[logged with traceback]" not in stderr, (argv, stderr[-3000:])


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.script)
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.text(max_size=15), max_size=5))
def test_arbitrary_tokens(cmd: Command, scratch: Path, argv: list[str]) -> None:
    main, parser = load(cmd)
    # Pure junk rarely names a sub-command; when it does, keep it bounded.
    if argv and argv[0] in subparsers(parser):
        if (argv[0],) in cmd.excluded:
            argv[0] = "--no-such-option"
        argv += list(cmd.bounded.get((argv[0],), ()))
    argv += list(cmd.always)
    code, stderr = run_main(main, argv)
    assert code in (0, 1, 2, 3), (argv, code, stderr[-2000:])
    assert "Traceback" not in stderr, (argv, stderr[-3000:])


@pytest.mark.e2e
@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.script)
def test_console_script_with_bad_input(cmd: Command, command: Any, tmp_path: Path,
                                       clean_env: dict[str, str]) -> None:
    """The installed script, as a process: junk config, unreachable Redis."""
    load(cmd)
    (tmp_path / "bad.toml").write_bytes(b"[redis\nurl = \xff\n")
    for argv in (["--no-such-option", "💥"], ["--config", "bad.toml"] + list(cmd.always)):
        result = subprocess.run([command(cmd.script), *argv], cwd=tmp_path,
                                env=dict(clean_env, MTBBS_REDIS_URL=UNREACHABLE),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode in (0, 1, 2, 3), (argv, result.stderr)
        assert "Traceback" not in result.stderr, (argv, result.stderr)



def test_status_with_a_tiny_timeout_answers_unknown(scratch: Path) -> None:
    main, _ = load(COMMANDS[2])
    for _ in range(20):
        try:
            code, stderr = run_main(main, ["status", "-t", "1e-9"])
        except BaseException as exc:  # what escaped main() would be a traceback
            pytest.fail(f"escaped: {type(exc).__name__}")
        assert code == 3
        assert "Traceback" not in stderr
