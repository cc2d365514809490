"""Every command as a real process: one-line usage errors, typos in the
configuration refused, secrets never printed, the ACL prefix validated.

``mtbbs-health-check`` keeps the seed script's behaviour (argparse's usage
block, then the error, exit 3), so it is checked apart.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

SECRET = "4242424242424242"


def run(command: Callable[[str], str], env: dict[str, str], name: str,
        *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([command(name), *args], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize(
    ("name", "args", "prog"),
    [
        ("mtbbs-agent", [], "mtbbs-agent"),
        ("mtbbs-agent", ["run", "--interval", "abc"], "mtbbs-agent run"),
        ("mtbbs-agent", ["spool", "--bogus"], "mtbbs-agent"),
        ("mtbbs-collector", [], "mtbbs-collector"),
        ("mtbbs-collector", ["hosts", "--bogus"], "mtbbs-collector"),
        ("mtbbs-alerter", [], "mtbbs-alerter"),
        ("mtbbs-alerter", ["silence"], "mtbbs-alerter silence"),
        ("mtbbs-monitor", [], "mtbbs-monitor"),
        ("mtbbs-monitor", ["acl", "--role", "nobody"], "mtbbs-monitor acl"),
        ("mtbbs-demo-bbs", ["--port", "x"], "mtbbs-demo-bbs"),
    ],
)
def test_a_usage_error_is_one_line_with_a_hint_and_exit_3(
        command: Callable[[str], str], clean_env: dict[str, str], name: str, args: list[str],
        prog: str) -> None:
    result = run(command, clean_env, name, *args)
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: ")
    assert lines[0].endswith(f"(see '{prog} --help')")
    assert result.stdout == ""


@pytest.mark.parametrize("args", [["status", "--bogus"], ["status", "-t", "x"]])
def test_the_nagios_plugin_also_says_unknown_on_stdout(
        command: Callable[[str], str], clean_env: dict[str, str], args: list[str]) -> None:
    result = run(command, clean_env, "mtbbs-collector", *args)
    assert result.returncode == 3
    assert result.stdout.startswith("MTBBS UNKNOWN - usage error: ")
    assert len(result.stdout.splitlines()) == 1
    assert len(result.stderr.splitlines()) == 1


def test_the_health_check_keeps_the_seed_scripts_usage_error(
        command: Callable[[str], str], clean_env: dict[str, str]) -> None:
    result = run(command, clean_env, "mtbbs-health-check", "--bogus")
    assert result.returncode == 3
    assert result.stderr.startswith("usage: mtbbs-health-check")
    assert result.stderr.splitlines()[-1] == ("mtbbs-health-check: error: unrecognized "
                                              "arguments: --bogus")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[agnet]\ninterval = 5\n", "configuration error: [agnet]: is not a known section"),
        ("[agent.extra]\nx = 1\n", "configuration error: agent.extra: is not a known setting "
                                   "([agent] has no sub-table of this name)"),
    ],
)
def test_a_typo_in_the_configuration_is_refused(
        command: Callable[[str], str], clean_env: dict[str, str], tmp_path: Path, text: str,
        expected: str) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text(text)
    result = run(command, clean_env, "mtbbs-agent", "spool", "--config", str(config),
                 "--spool", str(tmp_path / "spool.db"))
    assert result.returncode == 3
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(expected)


def test_debug_adds_a_traceback_and_keeps_exit_3(
        command: Callable[[str], str], clean_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text("[agnet]\n")
    result = run(command, clean_env, "mtbbs-monitor", "acl", "--config", str(config), "--debug")
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("configuration error: [agnet]")


@pytest.mark.parametrize(
    ("name", "args", "text", "setting_name"),
    [
        ("mtbbs-collector", ["status"], f"[redis]\npassword = {SECRET}\n", "redis.password"),
        ("mtbbs-monitor", ["acl"], f"[redis]\nurl = ['redis://:{SECRET}@h/0']\n", "redis.url"),
        ("mtbbs-alerter", ["test-notify", "--channel", "mail"],
         f"[mail]\npassword = {SECRET}\n", "mail.password"),
        ("mtbbs-alerter", ["test-notify", "--channel", "slack"],
         f"[slack]\nwebhook_url = ['https://hooks.example/{SECRET}']\n", "slack.webhook_url"),
    ],
)
def test_a_secret_of_the_wrong_type_is_never_printed(
        command: Callable[[str], str], clean_env: dict[str, str], tmp_path: Path, name: str,
        args: list[str], text: str, setting_name: str) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text(text)
    config.chmod(0o600)
    result = run(command, clean_env, name, *args, "--config", str(config))
    assert result.returncode == 3
    output = result.stdout + result.stderr
    assert SECRET not in output
    assert f"{setting_name}: must be a " in output and "(value not shown)" in output


def test_a_config_file_with_a_secret_readable_by_others_is_warned_about(
        command: Callable[[str], str], clean_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "monitor.toml"
    config.write_text(f"[redis]\npassword = '{SECRET}'\n")
    config.chmod(0o644)
    result = run(command, clean_env, "mtbbs-monitor", "acl", "--role", "collector",
                 "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert (f"the configuration file {config} holds a secret and is readable by group and "
            "others (mode 0644)") in result.stderr
    assert SECRET not in result.stdout + result.stderr
    config.chmod(0o600)
    quiet = run(command, clean_env, "mtbbs-monitor", "acl", "--role", "collector",
                "--config", str(config))
    assert "readable by" not in quiet.stderr


@pytest.mark.parametrize("prefix", ["x:\nACL SETUSER evil on >pw ~* +@all\n", "a b:",
                                    "x:\r", "x:*"])
def test_an_acl_prefix_that_could_inject_a_line_is_refused(
        command: Callable[[str], str], clean_env: dict[str, str], prefix: str) -> None:
    result = run(command, clean_env, "mtbbs-monitor", "acl", "--prefix", prefix)
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: redis.prefix: ")
    assert "is not allowed" in lines[0]
