"""Configuration: one TOML file, environment overrides, frozen settings.

Every component describes its section as a frozen dataclass whose fields
carry a default and a one-line ``doc`` in their metadata. :func:`load_section`
fills one from, in rising precedence, the defaults, the file's section,
``MTBBS_<SECTION>_<FIELD>`` environment variables and explicit overrides
(from command-line flags). A bad value raises :class:`ConfigError` naming the
setting as ``section.field``. Library code receives the finished object and
never reads the environment itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wire.errors import ConfigError
from wire.keys import DEFAULT_PREFIX, KeySpace

T = TypeVar("T")

logger = logging.getLogger(__name__)

CONFIG_ENV = "MTBBS_CONFIG"

# Every top-level table the one configuration file may hold, whichever
# component reads it (each program loads the whole file, so each must know
# them all to refuse a typo such as [agnet]). ``rules`` holds the alerter's
# rule tables; the others are settings sections (stack.reference lists their
# classes, and a test holds the two lists together).
SECTIONS = ("redis", "checks", "agent", "probe", "reporter", "demo", "collector", "exporter",
            "alerter", "mail", "slack", "webhook", "stack", "rules")


# Settings whose value is a secret, as (section, name): a configuration file
# holding one of them must not be readable by group or others. A test holds
# this list to the ``secret=True`` fields of every settings class.
SECRET_SETTINGS = frozenset({
    ("redis", "password"), ("redis", "sentinel_password"), ("mail", "password"),
    ("slack", "webhook_url"), ("webhook", "url"), ("webhook", "token"),
})


def setting(default: Any, doc: str, *, check: Callable[[Any], str | None] | None = None,
            secret: bool = False, echo: bool = True) -> Any:
    """A dataclass field with a documented default and an optional check.

    ``check`` returns an error phrase for a bad value, or None. A ``secret``
    is left out of ``repr`` so it never reaches a log, and an error about it
    never shows the value; ``echo=False`` keeps the value out of errors too
    (a URL may carry a password).
    """
    metadata = {"doc": doc, "check": check, "secret": secret, "echo": echo and not secret}
    if isinstance(default, list | dict):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata=metadata, repr=not secret)


def positive(value: Any) -> str | None:
    """Check: greater than zero."""
    return None if value > 0 else "must be greater than 0"


def non_negative(value: Any) -> str | None:
    """Check: zero or more."""
    return None if value >= 0 else "must be 0 or more"


def percentage(value: Any) -> str | None:
    """Check: within 0..100."""
    return None if 0 <= value <= 100 else "must be between 0 and 100"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    """Check: one of ``choices``."""

    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def load_document(path: str | Path | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The parsed TOML file named by ``path`` or ``$MTBBS_CONFIG``; {} if neither."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get(CONFIG_ENV) or None
    if path is None:
        return {}
    # Imported here: a run without a file (a cron health check) need not pay for the parser.
    import tomllib

    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("config", f"file {path} does not exist") from None
    except PermissionError:
        raise ConfigError("config", f"file {path} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"file {path} is not valid TOML ({exc})") from None
    except (IsADirectoryError, NotADirectoryError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError("config", f"file {path} cannot be read ({type(exc).__name__})") from None
    check_sections(document)
    warn_if_exposed(Path(path), "the configuration file", holds_secret=has_secret(document))
    return document


def check_sections(document: Mapping[str, Any]) -> None:
    """Refuse a top-level key that is not a known section, or a section that is no table."""
    for name, value in document.items():
        if name not in SECTIONS:
            shown = name if name.isprintable() and len(name) <= 40 else repr(name[:40])
            raise ConfigError(f"[{shown}]", f"is not a known section (known: "
                              f"{', '.join(SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(name, "must be a table ([" + name + "])")


def _base_type(hint: Any) -> tuple[Any, bool]:
    """The type behind an annotation, and whether None is allowed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return hint, False


def _type_word(value: Any) -> str:
    """What a TOML value is, in the words of the TOML specification."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time" if hasattr(value, "isoformat") else type(value).__name__


def _convert(name: str, raw: Any, hint: Any, *, from_text: bool, echo: bool = True) -> Any:
    kind, nullable = _base_type(hint)
    if raw is None or (from_text and nullable and raw == ""):
        if nullable:
            return None
        raise ConfigError(name, "must be set")
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if from_text and str(raw).strip().lower() in ("1", "true", "yes", "on"):
                return True
            if from_text and str(raw).strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(raw, bool) or (not from_text and not isinstance(raw, int)):
                raise ValueError
            return int(raw)
        if kind is float:
            if isinstance(raw, bool) or (not from_text and not isinstance(raw, int | float)):
                raise ValueError
            return float(raw)
        if kind is str:
            if not isinstance(raw, str):
                raise ValueError
            return raw
        if kind is Path:
            if not isinstance(raw, str) or not raw:
                raise ValueError
            return Path(raw)
        if origin is tuple:
            items = raw.split(",") if from_text and isinstance(raw, str) else raw
            if not isinstance(items, list | tuple):
                raise ValueError
            # Numbers pass as their text (retry_intervals = [5, 30]); a nested
            # list, a table, a date or a boolean would become text nobody wrote.
            if any(isinstance(i, bool) or not isinstance(i, str | int | float) for i in items):
                raise ValueError
            return tuple(str(i).strip() for i in items if str(i).strip())
    except (TypeError, ValueError):
        type_name = getattr(kind, "__name__", str(kind))
        if not echo:
            # Name the setting and what was found, never the value itself.
            raise ConfigError(name, f"must be a {type_name}, not {_type_word(raw)} (value not "
                              "shown)") from None
        raise ConfigError(name, f"{raw!r} is not a valid {type_name}") from None
    raise ConfigError(name, f"unsupported setting type {kind!r}")


def env_name(section: str, name: str) -> str:
    """The environment variable that overrides ``section.name``."""
    return f"MTBBS_{section}_{name}".upper().replace(".", "_").replace("-", "_")


def load_section(
    cls: type[T],
    document: Mapping[str, Any],
    section: str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` (a frozen dataclass of settings) for ``section``."""
    env = os.environ if env is None else env
    raw_section = document.get(section, {})
    if not isinstance(raw_section, dict):
        raise ConfigError(section, "must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key, raw in raw_section.items():
        if key not in known:
            what = "sub-table" if isinstance(raw, dict) else "setting"
            raise ConfigError(f"{section}.{key}", f"is not a known setting ([{section}] has no "
                              f"{what} of this name)")
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f"{section}.{spec.name}"
        hint = hints[spec.name]
        echo = spec.metadata.get("echo", True)
        value: Any = spec.default
        if spec.name in raw_section:
            value = _convert(name, raw_section[spec.name], hint, from_text=False, echo=echo)
        variable = env_name(section, spec.name)
        if variable in env:
            value = _convert(name, env[variable], hint, from_text=True, echo=echo)
        if overrides and overrides.get(spec.name) is not None:
            value = _convert(name, overrides[spec.name], hint, from_text=False, echo=echo)
        check = spec.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(name, problem)
        values[spec.name] = value
    return cls(**values)


def describe(cls: type, section: str) -> list[tuple[str, str, str, str]]:
    """(setting, environment variable, default, doc) rows for a reference table."""
    rows = []
    for spec in dataclasses.fields(cls):
        default = "(secret)" if spec.metadata.get("secret") else repr(spec.default)
        rows.append((f"{section}.{spec.name}", env_name(section, spec.name), default,
                     spec.metadata.get("doc", "")))
    return rows


# -- files that hold secrets ---------------------------------------------------

_warned: set[Path] = set()


def has_secret(document: Mapping[str, Any]) -> bool:
    """True when the parsed file sets a secret (or a Redis URL with a password)."""
    for section, name in SECRET_SETTINGS:
        table = document.get(section)
        if isinstance(table, dict) and table.get(name) not in (None, ""):
            return True
    redis_table = document.get("redis")
    url = redis_table.get("url") if isinstance(redis_table, dict) else None
    return isinstance(url, str) and _url_has_password(url)


def _url_has_password(url: str) -> bool:
    credentials = url.partition("://")[2].rpartition("@")[0]
    return ":" in credentials


def warn_if_exposed(path: Path, what: str, *, holds_secret: bool = True) -> None:
    """Log a warning, once per file, when ``path`` holds a secret group or others can read."""
    if not holds_secret:
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it reports the problem
    readers = [who for who, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH))
               if mode & bit]
    key = path.absolute()
    if not readers or key in _warned:
        return
    _warned.add(key)
    logger.warning("%s %s holds a secret and is readable by %s (mode %04o); chmod 600 it, "
                   "or 640 with a group only the service's user is in", what, path,
                   " and ".join(readers), stat.S_IMODE(mode))


def read_secret_file(path: Path, what: str) -> str:
    """The first line of a file holding a secret (warns when others can read it).

    Raises ``OSError`` or ``UnicodeDecodeError``; callers name their setting.
    """
    warn_if_exposed(path, what)
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].strip() if lines else ""


# -- the [redis] section, shared by every component --------------------------


def _redis_url(value: Any) -> str | None:
    if not str(value).startswith(("redis://", "rediss://", "unix://")):
        return "must start with redis://, rediss:// or unix://"
    return None


# Key names go into ACL rules (one line per user, for redis-cli or an aclfile)
# and into every command: no spaces, newlines or anything else that could
# end a line or a word there.
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9._:/{}-]{0,64}")


def _key_prefix(value: Any) -> str | None:
    if PREFIX_PATTERN.fullmatch(value) is None:
        return (f"{value[:80]!r} is not allowed: at most 64 letters, digits and . _ : - / {{ }} "
                "(no spaces, newlines or other characters)")
    return None


@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis; every component reads this section."""

    url: str = setting("redis://127.0.0.1:6379/0", "Redis URL (redis://, rediss:// for TLS, "
                       "unix://)", check=_redis_url, echo=False)
    username: str | None = setting(None, "ACL user name (overrides the URL's)")
    password: str | None = setting(None, "password (prefer password_file or "
                                   "MTBBS_REDIS_PASSWORD)", secret=True)
    password_file: Path | None = setting(None, "file whose first line is the password")
    prefix: str = setting(DEFAULT_PREFIX, "prefix of every key, stream and queue name (at "
                          "most 64 letters, digits and . _ : - / { })", check=_key_prefix)
    socket_timeout: float = setting(5.0, "seconds before a Redis command times out",
                                    check=positive)
    tls_ca_file: Path | None = setting(None, "CA bundle for rediss:// connections")
    sentinels: tuple[str, ...] = setting((), "Redis Sentinel addresses host:port; when set, "
                                         "the master is found through them")
    sentinel_service: str = setting("mymaster", "the Sentinel service (master) name")
    sentinel_password: str | None = setting(None, "password of the Sentinels themselves "
                                            "(when they require one)", secret=True)

    @property
    def keys(self) -> KeySpace:
        """Key names under this configuration's prefix."""
        return KeySpace(self.prefix)

    def resolved_password(self) -> str | None:
        """The password, read from ``password_file`` when one is named."""
        if self.password is not None:
            return self.password
        if self.password_file is None:
            return None
        try:
            password = read_secret_file(self.password_file, "redis.password_file")
            if not password:
                raise ValueError
            return password
        except (OSError, ValueError, UnicodeDecodeError):
            raise ConfigError("redis.password_file",
                              f"cannot read a password from {self.password_file}") from None

    def redacted_url(self) -> str:
        """The URL with any password masked, for logs and output."""
        head, sep, tail = self.url.partition("://")
        if "@" not in tail:
            return self.url
        credentials, _, rest = tail.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{head}{sep}{user}:***@{rest}" if ":" in credentials else self.url


def connect(settings: RedisSettings, **extra: Any) -> Any:
    """A redis-py client for ``settings`` (through Sentinel when configured).

    Connections are made lazily by redis-py: this never blocks on the network.
    ``extra`` is passed to the client (``decode_responses`` and the like).
    """
    import redis
    from redis.sentinel import Sentinel

    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_timeout,
        "health_check_interval": 30,
    }
    password = settings.resolved_password()
    if password is not None:
        options["password"] = password
    if settings.username is not None:
        options["username"] = settings.username
    tls = settings.url.startswith("rediss://")
    if tls:
        # redis-py >= 6.0 verifies the certificate and the host name by
        # default; asked for here so that no default can turn it off.
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
    if tls and settings.tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.tls_ca_file)
    options.update(extra)
    if settings.sentinels:
        # from_url turns rediss:// into a TLS connection class; Sentinel has no
        # URL, so the master connection must be asked for TLS explicitly.
        if tls:
            options["ssl"] = True
        addresses = []
        for item in settings.sentinels:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError("redis.sentinels", f"{item!r} is not host:port")
            addresses.append((host, int(port)))
        sentinel_options: dict[str, Any] = {"socket_timeout": settings.socket_timeout}
        if settings.sentinel_password is not None:
            sentinel_options["password"] = settings.sentinel_password
        sentinel = Sentinel(addresses, socket_timeout=settings.socket_timeout,
                            sentinel_kwargs=sentinel_options)
        last_part = settings.url.rsplit("/", 1)[-1]
        db = int(last_part) if last_part.isdigit() else 0
        return sentinel.master_for(settings.sentinel_service, db=db, **options)
    return redis.Redis.from_url(settings.url, **options)
