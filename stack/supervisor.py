"""Child processes of ``mtbbs-monitor up``: start, forward output, stop.

Each component runs as its own process in its own process group, so that a
Ctrl-C on the terminal reaches only ``up``, which then stops the children in
the reverse order of their start (the agent before the collector, Redis
last). Every line a child prints is written to our output with the child's
name in front and to ``<log_dir>/<name>.log``. On Linux each child also gets
SIGTERM from the kernel if ``up`` itself dies without cleaning up (SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _death_signal_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to SIGTERM the child when we die.

    The libc function is looked up here, before any fork, so the hook only
    makes one system call in the child.
    """
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        prctl = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return hook


# Lines of a child's output kept in memory (its log file has them all).
RECENT_LINES = 40


class Child:
    """One running component."""

    def __init__(self, name: str, argv: Sequence[str], process: subprocess.Popen[bytes],
                 log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.process = process
        self.log_path = log_path
        self.forwarder: threading.Thread | None = None
        # The newest lines it printed, for the message that reports its death.
        self.recent: deque[str] = deque(maxlen=RECENT_LINES)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while running, else the exit code (negative: killed by that signal)."""
        return self.process.poll()


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts children, forwards their output, stops them in reverse order."""

    def __init__(self, out: IO[str], log_dir: Path) -> None:
        self.out = out
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._lock = threading.Lock()
        self._hook = _death_signal_hook()
        self._width = 9

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str],
              replacing: Child | None = None) -> Child:
        """Start ``argv`` as the component ``name``.

        With ``replacing`` (a child that has exited), the new child takes its
        place, so that the stopping order stays the order of the first start.
        """
        if replacing is not None:
            # Whatever the dead child left running in its group goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(replacing.pid, signal.SIGKILL)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        self._width = max(self._width, len(name))
        process = subprocess.Popen(
            list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self._hook,
        )
        child = Child(name, argv, process, log_path)
        child.forwarder = threading.Thread(target=self._forward, args=(child,),
                                           name=f"forward-{name}", daemon=True)
        child.forwarder.start()
        if replacing is not None and replacing in self.children:
            self.children[self.children.index(replacing)] = child
        else:
            self.children.append(child)
        logger.debug("started %s (pid %s): %s", name, process.pid, " ".join(argv))
        return child

    def _forward(self, child: Child) -> None:
        stream = child.process.stdout
        assert stream is not None
        with open(child.log_path, "ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                child.recent.append(line)
                self.say(line, child.name)
        stream.close()

    def say(self, line: str, name: str = "up") -> None:
        """Write one line (or several) to the output, each prefixed by ``name``."""
        text = "".join(f"{name:>{self._width}} | {part}\n" for part in line.split("\n"))
        with self._lock:
            try:
                self.out.write(text)
                self.out.flush()
            except (OSError, ValueError):
                # Our terminal went away (closed SSH session): keep running,
                # the log files still get everything.
                pass

    def exited(self) -> Child | None:
        """The first child that is no longer running, if any."""
        for child in self.children:
            if child.exit_code() is not None:
                return child
        return None

    def tail(self, child: Child, count: int = 10) -> list[str]:
        """The last ``count`` lines ``child`` printed (once it has exited, all of them)."""
        if child.forwarder is not None and child.exit_code() is not None:
            # Its last lines may still be in the pipe.
            child.forwarder.join(timeout=2)
        return list(child.recent)[-count:]

    def pids(self) -> list[int]:
        """Process ids of the children started so far."""
        return [child.pid for child in self.children]

    def stop_all(self, timeout: float) -> None:
        """Stop every child, last started first: SIGTERM, wait, SIGKILL."""
        for child in reversed(self.children):
            self._stop(child, timeout)
        for child in self.children:
            if child.forwarder is not None:
                child.forwarder.join(timeout=2)

    def _stop(self, child: Child, timeout: float) -> None:
        if child.exit_code() is None:
            self.say(f"stopping {child.name} (pid {child.pid})")
            _signal(child.process, signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop within {timeout:g} s: killing it")
                _signal(child.process, signal.SIGKILL)
                child.process.wait(5)
        # Whatever the child started in its group (an rq work horse, say)
        # must not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


def _signal(process: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
