"""Fuzzing the configuration loader: any document, value or variable -> ConfigError at worst.

Every settings dataclass of the project is found by walking the packages (a
new section is fuzzed without anyone listing it here) and loaded from
arbitrary TOML values, arbitrary environment strings and arbitrary TOML
text. The only exception allowed out is :class:`wire.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import math
import pkgutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stack.reference import is_settings_class
from wire.config import env_name, load_document, load_section
from wire.errors import ConfigError

PACKAGES = ("wire", "agent", "collector", "alerter", "stack", "demobbs")


def discover() -> list[type]:
    """Every settings dataclass defined in our packages (``__main__`` modules skipped)."""
    found: dict[str, type] = {}
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names = [package_name] + [
            info.name for info in pkgutil.walk_packages(package.__path__, f"{package_name}.")
            if not info.name.endswith("__main__")
        ]
        for name in names:
            module = importlib.import_module(name)
            for value in vars(module).values():
                if is_settings_class(value) and value.__module__ == name:
                    found[f"{name}.{value.__name__}"] = value
    return [found[k] for k in sorted(found)]


SETTINGS_CLASSES = discover()


def test_discovery_finds_the_known_sections() -> None:
    names = {cls.__name__ for cls in SETTINGS_CLASSES}
    assert {"RedisSettings", "AgentSettings", "ProbeSettings", "CheckSettings",
            "ReporterSettings"} <= names


# TOML's value space, as tomllib hands it over.
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.datetimes(), st.dates(), st.times(),
    st.datetimes(timezones=st.just(datetime.UTC)),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=8,
)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def loads_or_config_error(cls: type, document: Any, env: dict[str, str]) -> None:
    try:
        result = load_section(cls, document, "fuzz", env=env)
    except ConfigError as exc:
        # A value of its own is named in the section it was read from; a
        # pair that must agree (checked once the section is built) names the
        # setting in its usual section.
        name = exc.setting.rpartition(".")[2]
        assert exc.setting.startswith("fuzz") or name in field_names(cls), exc.setting
        return
    assert isinstance(result, cls)


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_arbitrary_toml_values(cls: type, data: st.DataObject) -> None:
    keys = st.sampled_from(field_names(cls)) | st.text(max_size=12)
    section = data.draw(st.dictionaries(keys, toml_values, max_size=6))
    document: Any = data.draw(st.sampled_from([{"fuzz": section}, {"fuzz": 3},
                                               {"fuzz": [section]}, {"fuzz": "x"}, {}]))
    loads_or_config_error(cls, document, {})


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_arbitrary_environment_strings(cls: type, data: st.DataObject) -> None:
    names = field_names(cls)
    chosen = data.draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True))
    text = st.text(max_size=30) | st.sampled_from(
        ["", " ", "0", "-1", "1e309", "nan", "inf", "-inf", "yes", "off", "9" * 5000,
         "redis://", "rediss://x", "a,b,,c", "\x00", "/", "~"])
    env = {env_name("fuzz", name): data.draw(text) for name in chosen}
    loads_or_config_error(cls, {}, env)


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_wrong_types_fail_naming_the_setting(cls: type) -> None:
    for spec in dataclasses.fields(cls):
        for wrong in ({"a": 1}, [[1]], math.nan, datetime.date(2026, 1, 1)):
            with pytest.raises(ConfigError) as caught:
                load_section(cls, {"fuzz": {spec.name: wrong}}, "fuzz", env={})
            assert caught.value.setting == f"fuzz.{spec.name}", (spec.name, wrong)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_toml_text(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            document = load_document(path, env={})
        except ConfigError:
            return
        for cls in SETTINGS_CLASSES:
            for section in ("fuzz", *document):
                try:
                    load_section(cls, document, section, env={})
                except ConfigError:
                    pass
