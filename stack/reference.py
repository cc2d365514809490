"""The configuration reference: every section, setting, variable and default.

Each component keeps its settings in a frozen dataclass; this module knows
which dataclass reads which section of the TOML file, renders the Markdown
tables of the configuration pages (``DOCUMENTS``) from them
(``scripts/config_reference.py``) and lists
the ``MTBBS_...`` environment variables that mean something, so that the
deployment files can be checked against the code.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wire.config import CONFIG_ENV, describe, env_name

# (section, module, class), in the order the reference presents them.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("redis", "wire.config", "RedisSettings"),
    ("checks", "agent.checks.settings", "CheckSettings"),
    ("agent", "agent.settings", "AgentSettings"),
    ("probe", "agent.settings", "ProbeSettings"),
    ("reporter", "agent.reporter", "ReporterSettings"),
    ("demo", "demobbs.server", "DemoSettings"),
    ("collector", "collector.settings", "CollectorSettings"),
    ("exporter", "collector.settings", "ExporterSettings"),
    ("alerter", "alerter.settings", "AlerterSettings"),
    ("mail", "alerter.settings", "MailSettings"),
    ("slack", "alerter.settings", "SlackSettings"),
    ("webhook", "alerter.settings", "WebhookSettings"),
    ("stack", "stack.settings", "StackSettings"),
)

# Variables read outside any section.
GLOBAL_VARIABLES = {
    CONFIG_ENV: "the TOML configuration file, when --config is not given",
    "MTBBS_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR, when --log-level is not given",
}

PACKAGES = ("wire", "agent", "collector", "alerter", "demobbs", "stack")

BEGIN_MARK = "<!-- BEGIN CONFIG REFERENCE (scripts/config_reference.py) -->"
END_MARK = "<!-- END CONFIG REFERENCE -->"

# The pages that carry the reference between the marks, relative to the
# repository: English and Japanese (the tables are the same).
DOCUMENTS = ("docs/configuration.md", "docs/configuration.ja.md")


def settings_class(module: str, name: str) -> type | None:
    """The class, or None when its module is not there (yet)."""
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return cls if isinstance(cls, type) else None


def sections() -> list[tuple[str, type]]:
    """(section, settings class) of every section whose class exists."""
    found = []
    for section, module, name in SECTIONS:
        cls = settings_class(module, name)
        if cls is not None:
            found.append((section, cls))
    return found


def missing_sections() -> list[str]:
    """Sections whose class cannot be imported."""
    return [s for s, m, n in SECTIONS if settings_class(m, n) is None]


def is_settings_class(obj: Any) -> bool:
    """A dataclass whose every field was declared with ``wire.config.setting``."""
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        return False
    fields = dataclasses.fields(obj)
    return bool(fields) and all("doc" in f.metadata for f in fields)


def _modules() -> Iterator[str]:
    for package in PACKAGES:
        module = importlib.import_module(package)
        yield package
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            if not info.name.rsplit(".", 1)[-1].startswith("__"):
                yield info.name


def discover_settings_classes() -> set[tuple[str, str]]:
    """(module, class) of every settings dataclass defined in our packages."""
    found = set()
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr, obj in vars(module).items():
            if is_settings_class(obj) and obj.__module__ == name:
                found.add((name, attr))
    return found


def known_env_names() -> set[str]:
    """Every ``MTBBS_...`` variable that some component reads."""
    names = set(GLOBAL_VARIABLES)
    for section, cls in sections():
        names.update(env_name(section, f.name) for f in dataclasses.fields(cls))
    return names


def toml_value(value: Any) -> str:
    """A default as one would write it in the TOML file.

    A default computed from this machine's name is shown as such, so the
    reference reads the same wherever it is generated.
    """
    if value is None:
        return "(unset)"
    if isinstance(value, str) and value and value == _machine_host_id():
        return "(this machine's short name)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def _machine_host_id() -> str:
    from stack.up import default_host_id

    return default_host_id()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The Markdown tables of every section, as the configuration pages carry them."""
    lines = [
        "| variable | meaning |",
        "|---|---|",
        *[f"| `{name}` | {_cell(doc)} |" for name, doc in GLOBAL_VARIABLES.items()],
    ]
    for section, cls in sections():
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines += ["", f"### `[{section}]`", ""]
        if summary:
            lines += [_cell(summary), ""]
        lines += ["| setting | environment | default | meaning |", "|---|---|---|---|"]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for setting, variable, default, doc in describe(cls, section):
            spec = fields[setting.split(".", 1)[1]]
            shown = default if spec.metadata.get("secret") else toml_value(spec.default)
            lines.append(f"| `{spec.name}` | `{variable}` | `{_cell(shown)}` | {_cell(doc)} |")
    return "\n".join(lines) + "\n"


def block() -> str:
    """The reference between its markers, as it stands in a configuration page."""
    return f"{BEGIN_MARK}\n{markdown()}{END_MARK}"


def current_block(page: str) -> str | None:
    """The marked block of a page's text, or None when it has none."""
    start = page.find(BEGIN_MARK)
    end = page.find(END_MARK)
    if start < 0 or end < start:
        return None
    return page[start:end + len(END_MARK)]


def update(page: str) -> str:
    """``page`` with its marked block replaced by the current reference."""
    old = current_block(page)
    if old is None:
        raise ValueError(f"no {BEGIN_MARK} ... {END_MARK} block")
    return page.replace(old, block())
