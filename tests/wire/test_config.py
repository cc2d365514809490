"""Configuration loading: file, environment, overrides and clear errors."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stack import reference
from wire.cli import ArgumentParser, guarded
from wire.config import (
    SECRET_SETTINGS,
    SECTIONS,
    RedisSettings,
    connect,
    load_document,
    load_section,
    percentage,
    setting,
    warn_if_exposed,
)
from wire.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    interval: float = setting(60.0, "seconds between cycles")
    limit: int = setting(100, "a limit")
    percent: float = setting(90.0, "a percentage", check=percentage)
    enabled: bool = setting(True, "a switch")
    names: tuple[str, ...] = setting(("a",), "a list")
    path: Path | None = setting(None, "a path")


def parse(path: Path) -> dict[str, Any]:
    """The file as TOML: [sample] is made up, and load_document refuses unknown sections."""
    return tomllib.loads(path.read_text())


def test_defaults() -> None:
    assert load_section(Sample, {}, "sample", env={}) == Sample()


def test_precedence_file_env_override(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sample]\ninterval = 5\nlimit = 7\nnames = ['x', 'y']\n")
    document = parse(config)
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
        load_section(Sample, parse(config), "sample", env=env)
    assert caught.value.setting == setting_name


def test_numbers_in_a_list_of_text_are_their_text(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[sample]\nnames = [5, 'x', 1.5]\n")
    loaded = load_section(Sample, parse(config), "sample", env={})
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
    assert capsys.readouterr().err == ("x: error: argument --n: invalid int value: 'x' "
                                       "(see 'x --help')\n")


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


def test_the_known_sections_are_the_settings_sections_and_rules() -> None:
    assert set(SECTIONS) == {name for name, *_ in reference.SECTIONS} | {"rules"}


def test_the_secret_settings_are_the_secret_fields() -> None:
    secret_fields = {(section, spec.name) for section, cls in reference.sections()
                     for spec in dataclasses.fields(cls) if spec.metadata.get("secret")}
    assert secret_fields == SECRET_SETTINGS


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[agnet]\ninterval = 5\n", "[agnet]"),
        ("[agent.extra]\nx = 1\n", "agent.extra"),
        ("[agent]\n[agent.extra]\n", "agent.extra"),
        ("[[agent.extra]]\nx = 1\n", "agent.extra"),
        ("[redis.tls]\nca = 'x'\n", "redis.tls"),
        ("interval = 5\n", "[interval]"),
        ("agent = 5\n", "agent"),
    ],
)
def test_unknown_sections_and_sub_tables_are_refused(tmp_path: Path, text: str,
                                                     named: str) -> None:
    from agent.settings import AgentSettings

    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        document = load_document(config, env={})
        load_section(RedisSettings, document, "redis", env={})
        load_section(AgentSettings, document, "agent", env={})
    assert caught.value.setting == named


@pytest.mark.parametrize(
    ("text", "setting_name"),
    [
        ("[redis]\npassword = 4242424242424242\n", "redis.password"),
        ("[redis]\nsentinel_password = ['4242424242424242']\n", "redis.sentinel_password"),
        ("[redis]\nurl = ['redis://:4242424242424242@h/0']\n", "redis.url"),
        ("[mail]\npassword = 4242424242424242\n", "mail.password"),
        ("[slack]\nwebhook_url = ['https://hooks.example/4242424242424242']\n",
         "slack.webhook_url"),
        ("[webhook]\ntoken = {t = '4242424242424242'}\n", "webhook.token"),
    ],
)
def test_a_secret_of_the_wrong_type_is_named_not_shown(tmp_path: Path, text: str,
                                                        setting_name: str) -> None:
    from alerter.settings import MailSettings, SlackSettings, WebhookSettings

    config = tmp_path / "c.toml"
    config.write_text(text)
    config.chmod(0o600)
    document = load_document(config, env={})
    section = setting_name.split(".")[0]
    cls = {"redis": RedisSettings, "mail": MailSettings, "slack": SlackSettings,
           "webhook": WebhookSettings}[section]
    with pytest.raises(ConfigError) as caught:
        load_section(cls, document, section, env={})
    assert caught.value.setting == setting_name
    assert "4242" not in str(caught.value)
    assert "(value not shown)" in str(caught.value)


@pytest.mark.parametrize("prefix", ["a b:", "x:\nACL SETUSER evil on >pw ~* +@all\n", "p\t",
                                    "p;", "p*", "é:", "x" * 65])
def test_a_prefix_that_could_inject_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_section(RedisSettings, {}, "redis", env={}, overrides={"prefix": prefix})
    assert caught.value.setting == "redis.prefix"
    assert "\n" not in str(caught.value)


def test_tls_clients_verify_the_host_name() -> None:
    client = connect(RedisSettings(url="rediss://redis.example:6380/0"))
    try:
        options = client.connection_pool.connection_kwargs
        assert options["ssl_check_hostname"] is True
        assert options["ssl_cert_reqs"] == "required"
    finally:
        client.close()
    plain = connect(RedisSettings(url="redis://redis.example:6379/0"))
    try:
        assert "ssl_check_hostname" not in plain.connection_pool.connection_kwargs
    finally:
        plain.close()


def test_a_readable_secret_file_is_warned_about_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text("[redis]\npassword = 'hunter2hunter2'\n")
    config.chmod(0o644)
    password = tmp_path / "redis.pw"
    password.write_text("hunter2hunter2\n")
    password.chmod(0o640)
    private = tmp_path / "private.toml"
    private.write_text("[redis]\npassword = 'hunter2hunter2'\n")
    private.chmod(0o600)
    harmless = tmp_path / "plain.toml"
    harmless.write_text("[agent]\ninterval = 5\n")
    harmless.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="wire.config"):
        load_document(config, env={})
        load_document(config, env={})
        load_document(private, env={})
        load_document(harmless, env={})
        settings = load_section(RedisSettings, {"redis": {"password_file": str(password)}},
                                "redis", env={})
        assert settings.resolved_password() == "hunter2hunter2"
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"the configuration file {config} holds a secret and is readable by group and others "
        "(mode 0644); chmod 600 it, or 640 with a group only the service's user is in",
        f"redis.password_file {password} holds a secret and is readable by group (mode 0640); "
        "chmod 600 it, or 640 with a group only the service's user is in",
    ]
    assert "hunter2" not in caplog.text
    warn_if_exposed(password, "again")  # once per file
    assert len(caplog.records) == 2


def test_debug_adds_a_traceback_but_keeps_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    @guarded
    def broken(argv: Any = None) -> int:
        raise RuntimeError("something unexpected")

    assert broken(["--debug"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: RuntimeError: something unexpected")
    assert broken([]) == 3
    assert capsys.readouterr().err == "error: RuntimeError: something unexpected\n"
