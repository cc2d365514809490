"""Conventions every command line of the project follows.

* A usage error exits 3 (UNKNOWN), not argparse's 2, which Nagios would read
  as CRITICAL; the message is one line on stderr.
* ``guarded`` turns any uncaught error of a command into one line on stderr
  and exit 3, never a traceback (``--debug`` shows the traceback).
* ``--config``, ``--redis-url`` and ``--prefix`` mean the same everywhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from wire.config import RedisSettings, load_document, load_section
from wire.errors import ConfigError
from wire.status import Status

EXIT_SCRIPT_ERROR = int(Status.UNKNOWN)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with exit code 3 on usage errors."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_SCRIPT_ERROR, f"{self.prog}: error: {message}\n")


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
            print(f"configuration error: {exc}", file=sys.stderr)
            return EXIT_SCRIPT_ERROR
        except BrokenPipeError:
            # A pager or `head` closed our output: not an error of ours.
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            except OSError:
                pass
            return EXIT_SCRIPT_ERROR
        except Exception as exc:
            if debug:
                raise
            text = str(exc).splitlines()[0] if str(exc) else ""
            print(f"error: {type(exc).__name__}: {text}".rstrip(": "), file=sys.stderr)
            return EXIT_SCRIPT_ERROR

    wrapper.__doc__ = main.__doc__
    wrapper.__name__ = getattr(main, "__name__", "main")
    return wrapper
