"""Configuration loading: file, environment, overrides and clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from wire.cli import ArgumentParser
from wire.config import RedisSettings, load_document, load_section, percentage, setting
from wire.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    interval: float = setting(60.0, "seconds between cycles")
    limit: int = setting(100, "a limit")
    percent: float = setting(90.0, "a percentage", check=percentage)
    enabled: bool = setting(True, "a switch")
    names: tuple[str, ...] = setting(("a",), "a list")
    path: Path | None = setting(None, "a path")


def test_defaults() -> None:
    assert load_section(Sample, {}, "sample", env={}) == Sample()


def test_precedence_file_env_override(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sample]\ninterval = 5\nlimit = 7\nnames = ['x', 'y']\n")
    document = load_document(config, env={})
    env = {"MTBBS_SAMPLE_LIMIT": "8", "MTBBS_SAMPLE_ENABLED": "no", "MTBBS_SAMPLE_PATH": "/d"}
    loaded = load_section(Sample, document, "sample", env=env, overrides={"interval": 2.5})
    assert loaded == Sample(interval=2.5, limit=8, enabled=False, names=("x", "y"),
                            path=Path("/d"))


@pytest.mark.parametrize(
    ("text", "env", "setting_name"),
    [
        ("[sample]\nlimit = 'many'\n", {}, "sample.limit"),
        ("[sample]\npercent = 150\n", {}, "sample.percent"),
        ("[sample]\nunknown = 1\n", {}, "sample.unknown"),
        ("", {"MTBBS_SAMPLE_LIMIT": "x"}, "sample.limit"),
        ("", {"MTBBS_SAMPLE_ENABLED": "perhaps"}, "sample.enabled"),
        ("sample = 3\n", {}, "sample"),
        ("[sample]\nnames = [['x']]\n", {}, "sample.names"),
        ("[sample]\nnames = [{ x = 1 }]\n", {}, "sample.names"),
        ("[sample]\nnames = [true]\n", {}, "sample.names"),
        ("[sample]\nnames = [2026-01-01]\n", {}, "sample.names"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, text: str, env: dict[str, str],
                                     setting_name: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_section(Sample, load_document(config, env={}), "sample", env=env)
    assert caught.value.setting == setting_name


def test_numbers_in_a_list_of_text_are_their_text(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sample]\nnames = [5, 'x', 1.5]\n")
    loaded = load_section(Sample, load_document(config, env={}), "sample", env={})
    assert loaded.names == ("5", "x", "1.5")


def test_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[redis\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_document(bad, env={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_document(tmp_path / "missing.toml", env={})
    assert load_document(None, env={}) == {}


def test_redis_password_never_in_repr(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    settings = load_section(RedisSettings, {}, "redis",
                            env={"MTBBS_REDIS_PASSWORD_FILE": str(secret_file),
                                 "MTBBS_REDIS_URL": "redis://u:hunter2@h:1/0"})
    assert settings.resolved_password() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert "hunter2" not in settings.redacted_url()
    with pytest.raises(ConfigError) as caught:
        load_section(RedisSettings, {}, "redis", env={"MTBBS_REDIS_URL": "http://x"})
    assert caught.value.setting == "redis.url"


def test_usage_error_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    parser = ArgumentParser(prog="x")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--n", "x"])
    assert caught.value.code == 3


def test_a_path_through_a_file_is_a_config_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_document(plain / "config.toml", env={})


def test_sentinel_password_is_secret() -> None:
    settings = load_section(RedisSettings, {}, "redis",
                            env={"MTBBS_REDIS_SENTINEL_PASSWORD": "sentinel-secret"})
    assert settings.sentinel_password == "sentinel-secret"
    assert "sentinel-secret" not in repr(settings)
