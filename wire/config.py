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
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from wire.errors import ConfigError
from wire.keys import DEFAULT_PREFIX, KeySpace

T = TypeVar("T")

CONFIG_ENV = "MTBBS_CONFIG"


def setting(default: Any, doc: str, *, check: Callable[[Any], str | None] | None = None,
            secret: bool = False) -> Any:
    """A dataclass field with a documented default and an optional check.

    ``check`` returns an error phrase for a bad value, or None. A ``secret``
    is left out of ``repr`` so it never reaches a log.
    """
    metadata = {"doc": doc, "check": check, "secret": secret}
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
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("config", f"file {path} does not exist") from None
    except PermissionError:
        raise ConfigError("config", f"file {path} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"file {path} is not valid TOML ({exc})") from None
    except (IsADirectoryError, NotADirectoryError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError("config", f"file {path} cannot be read ({type(exc).__name__})") from None


def _base_type(hint: Any) -> tuple[Any, bool]:
    """The type behind an annotation, and whether None is allowed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return hint, False


def _convert(name: str, raw: Any, hint: Any, *, from_text: bool) -> Any:
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
    for key in raw_section:
        if key not in known and not isinstance(raw_section[key], dict):
            raise ConfigError(f"{section}.{key}", "is not a known setting")
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f"{section}.{spec.name}"
        hint = hints[spec.name]
        value: Any = spec.default
        if spec.name in raw_section:
            value = _convert(name, raw_section[spec.name], hint, from_text=False)
        variable = env_name(section, spec.name)
        if variable in env:
            value = _convert(name, env[variable], hint, from_text=True)
        if overrides and overrides.get(spec.name) is not None:
            value = _convert(name, overrides[spec.name], hint, from_text=False)
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


# -- the [redis] section, shared by every component --------------------------


def _redis_url(value: Any) -> str | None:
    if not str(value).startswith(("redis://", "rediss://", "unix://")):
        return "must start with redis://, rediss:// or unix://"
    return None


@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis; every component reads this section."""

    url: str = setting("redis://127.0.0.1:6379/0", "Redis URL (redis://, rediss:// for TLS, "
                       "unix://)", check=_redis_url)
    username: str | None = setting(None, "ACL user name (overrides the URL's)")
    password: str | None = setting(None, "password (prefer password_file or "
                                   "MTBBS_REDIS_PASSWORD)", secret=True)
    password_file: Path | None = setting(None, "file whose first line is the password")
    prefix: str = setting(DEFAULT_PREFIX, "prefix of every key, stream and queue name")
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
            return self.password_file.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError):
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
