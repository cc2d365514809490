"""Conventions every command line of the project follows.

* A usage error exits 3 (UNKNOWN), not argparse's 2, which Nagios would read
  as CRITICAL; the message is one line on stderr that ends with a hint to
  ``--help``. A sub-command can also have a line printed on stdout (a
  Nagios plugin's ``UNKNOWN`` line) by setting the default
  :data:`USAGE_STDOUT` to a function of the message.
* ``guarded`` turns any uncaught error of a command into one line on stderr
  and exit 3, never a traceback; ``--debug`` adds the traceback but the exit
  code stays 3.
* ``--config``, ``--redis-url`` and ``--prefix`` mean the same everywhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from wire.config import RedisSettings, load_document, load_section
from wire.errors import ConfigError
from wire.status import Status

EXIT_SCRIPT_ERROR = int(Status.UNKNOWN)


# A parser default: ``fn(message) -> str``, a line printed on stdout at a usage error.
USAGE_STDOUT = "usage_error_stdout"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with exit code 3 and one line on usage errors.

    ``usage_on_error=True`` keeps argparse's usage block before the error
    line (the seed's health check prints it as its original did).
    """

    def __init__(self, *args: Any, usage_on_error: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_on_error = usage_on_error
        self.parsed_namespace: argparse.Namespace | None = None

    def error(self, message: str) -> NoReturn:
        stdout_line = getattr(self.parsed_namespace, USAGE_STDOUT, None) \
            or self.get_default(USAGE_STDOUT)
        self._usage_error(message, stdout_line)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        # argparse reports unknown arguments from the top parser, after this
        # returns; the namespace kept here tells error() which sub-command
        # (and so which USAGE_STDOUT) they were given to.
        parsed, extras = super().parse_known_args(args, namespace)
        self.parsed_namespace = parsed
        return parsed, extras

    def _usage_error(self, message: str, stdout_line: Callable[[str], str] | None) -> NoReturn:
        if stdout_line is not None:
            print(stdout_line(message), flush=True)
        if self.usage_on_error:
            self.print_usage(sys.stderr)
            self.exit(EXIT_SCRIPT_ERROR, f"{self.prog}: error: {message}\n")
        text = " ".join(message.split())  # argparse's messages may span lines
        self.exit(EXIT_SCRIPT_ERROR,
                  f"{self.prog}: error: {text} (see '{self.prog} --help')\n")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--redis-url``, ``--prefix``, ``--log-level``, ``--debug``."""
    group = parser.add_argument_group("common options")
    group.add_argument("--config", metavar="FILE",
                       help="TOML configuration file (default: $MTBBS_CONFIG, else built-in "
                       "defaults)")
    group.add_argument("--redis-url", metavar="URL",
                       help="Redis URL, overrides [redis] url and $MTBBS_REDIS_URL")
    group.add_argument("--prefix", metavar="PREFIX",
                       help="key prefix, overrides [redis] prefix (default mtbbs:)")
    group.add_argument("--log-level", default=None, metavar="LEVEL",
                       help="DEBUG, INFO, WARNING or ERROR (default INFO, or "
                       "$MTBBS_LOG_LEVEL)")
    group.add_argument("--debug", action="store_true",
                       help="show tracebacks of unexpected errors")


def load_config(args: argparse.Namespace,
                env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], RedisSettings]:
    """The configuration document and the [redis] settings for ``args``."""
    env = os.environ if env is None else env
    document = load_document(getattr(args, "config", None), env)
    redis_settings = load_section(
        RedisSettings, document, "redis", env,
        {"url": getattr(args, "redis_url", None), "prefix": getattr(args, "prefix", None)},
    )
    return document, redis_settings


def setup_logging(level: str | None, env: Mapping[str, str] | None = None) -> None:
    """Configure the root logger; only entry points call this."""
    env = os.environ if env is None else env
    name = (level or env.get("MTBBS_LOG_LEVEL") or "INFO").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ConfigError("log_level", f"{name!r} is not a logging level")
    logging.basicConfig(
        level=numeric,
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def guarded(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a command's main so that no error escapes as a traceback."""

    def wrapper(argv: Sequence[str] | None = None) -> int:
        debug = "--debug" in (sys.argv[1:] if argv is None else list(argv))
        try:
            return main(argv)
        except KeyboardInterrupt:
            return 130
        except ConfigError as exc:
            if debug:
                traceback.print_exc()
            print(f"configuration error: {exc}", file=sys.stderr)
            return EXIT_SCRIPT_ERROR
        except BrokenPipeError:
            # A pager or `head` closed our output: not an error of ours.
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            except OSError:
                pass
            return EXIT_SCRIPT_ERROR
        except Exception as exc:  # noqa: BLE001 - a command never ends in a traceback
            # --debug shows where it happened; the exit code stays 3, which
            # Nagios reads as UNKNOWN (a bare traceback would exit 1, WARNING).
            if debug:
                traceback.print_exc()
            text = str(exc).splitlines()[0] if str(exc) else ""
            print(f"error: {type(exc).__name__}: {text}".rstrip(": "), file=sys.stderr)
            return EXIT_SCRIPT_ERROR

    wrapper.__doc__ = main.__doc__
    wrapper.__name__ = getattr(main, "__name__", "main")
    return wrapper
