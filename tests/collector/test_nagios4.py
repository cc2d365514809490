"""The documents' Nagios objects under a real Nagios 4.

Where ``nagios4`` is installed (Debian's package), each document's
``define`` blocks go into a minimal Nagios configuration next to the
package's sample templates, commands, contacts and time periods, and
``nagios4 -v`` must verify it without errors or warnings. Then every
documented command line is run as Nagios would expand it (``$HOSTNAME$``,
``$ARGn$``), with the documented install prefix and configuration file
pointed at this test's, against a fleet in a real Redis.
"""

from __future__ import annotations

import getpass
import grp
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAGIOS = shutil.which("nagios4") or next(
    (str(p) for p in (Path("/usr/sbin/nagios4"),) if p.exists()), None)
SAMPLES = Path("/etc/nagios4/objects")
SAMPLE_FILES = ("commands.cfg", "contacts.cfg", "timeperiods.cfg", "templates.cfg")
DOCUMENTS = ["README.md", "docs/integrations.md", "docs/integrations.ja.md", "docs/collector.md"]
DOCUMENTED_PREFIX = "/opt/mtbbs-monitor/bin/"
DOCUMENTED_CONFIG = "/etc/mtbbs-monitor/mtbbs-monitor.toml"
PLUGIN_FIRST_LINE = re.compile(r"^MTBBS (OK|WARNING|CRITICAL|UNKNOWN) - [^\n|]+( \| .+)?$")

needs_nagios = pytest.mark.skipif(
    NAGIOS is None or not all((SAMPLES / name).exists() for name in SAMPLE_FILES),
    reason="nagios4 (Debian package nagios4) is not installed")


def define_blocks(document: str) -> list[str]:
    """The ``define ... { ... }`` objects of a document's code blocks."""
    text = (REPO / document).read_text(encoding="utf-8")
    return re.findall(r"^define \w+ \{\n.*?^\}", text, re.MULTILINE | re.DOTALL)


def directives(block: str) -> dict[str, str]:
    pairs = (line.strip().split(None, 1) for line in block.splitlines()[1:-1] if line.strip())
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def documents_with_objects() -> list[str]:
    return [d for d in DOCUMENTS if any("command_line" in b for b in define_blocks(d))]


def nagios_config(directory: Path, blocks: list[str]) -> Path:
    """A main configuration whose objects are the samples and ``blocks``,
    plus a host for each host a service names and a service for each
    command no service uses."""
    objects = [directives(b) | {"kind": b.split()[1]} for b in blocks]
    hosts = {o["host_name"] for o in objects if o["kind"] == "service" and "host_name" in o}
    hosts -= {o.get("host_name") for o in objects if o["kind"] == "host"}
    used = {o.get("check_command", "").split("!")[0] for o in objects}
    extra = []
    for command in (o for o in objects if o["kind"] == "command"):
        if command["command_name"] not in used:
            arguments = "!85!95" if "$ARG" in command["command_line"] else ""
            hosts.add("bbs-01")
            extra.append(f"define service {{\n    use generic-service\n    host_name bbs-01\n"
                         f"    service_description {command['command_name']}\n"
                         f"    check_command {command['command_name']}{arguments}\n}}")
    # Debian's samples leave check-host-alive commented out: hosts of the
    # generic template with the sample admins, checked by nothing.
    extra += [f"define host {{\n    use generic-host\n    host_name {host}\n"
              f"    address 127.0.0.1\n    max_check_attempts 3\n    check_period 24x7\n"
              f"    contact_groups admins\n}}" for host in sorted(hosts)]
    (directory / "objects.cfg").write_text("\n".join(blocks + extra) + "\n")
    (directory / "resource.cfg").write_text("$USER1$=/usr/lib/nagios/plugins\n")
    main = directory / "nagios.cfg"
    lines = [f"cfg_file={SAMPLES / name}" for name in SAMPLE_FILES] + [
        f"cfg_file={directory / 'objects.cfg'}",
        f"resource_file={directory / 'resource.cfg'}",
        f"log_file={directory / 'nagios.log'}",
        f"object_cache_file={directory / 'objects.cache'}",
        f"precached_object_file={directory / 'objects.precache'}",
        f"status_file={directory / 'status.dat'}",
        f"temp_file={directory / 'nagios.tmp'}",
        f"temp_path={directory}",
        f"lock_file={directory / 'nagios.lock'}",
        f"check_result_path={directory}",
        f"command_file={directory / 'nagios.cmd'}",
        # Verification checks these directories as Nagios's user: ours here.
        f"nagios_user={getpass.getuser()}",
        f"nagios_group={grp.getgrgid(os.getgid()).gr_name}",
        "illegal_macro_output_chars=`~$&|'\"<>",
    ]
    main.write_text("\n".join(lines) + "\n")
    return main


def expand(command_line: str, host: str, arguments: list[str], prefix: str,
           config: Path) -> str:
    """The command line as Nagios runs it, installed here instead of /opt."""
    line = command_line.replace("$HOSTNAME$", host)
    for number, value in enumerate(arguments, start=1):
        line = line.replace(f"${f'ARG{number}'}$", value)
    return line.replace(DOCUMENTED_PREFIX, prefix).replace(DOCUMENTED_CONFIG, str(config))


@needs_nagios
@pytest.mark.parametrize("document", documents_with_objects())
def test_the_documents_objects_verify_under_nagios4(document: str, tmp_path: Path) -> None:
    main = nagios_config(tmp_path, define_blocks(document))
    done = subprocess.run([str(NAGIOS), "-v", str(main)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Total Warnings: 0" in done.stdout and "Total Errors:   0" in done.stdout, done.stdout


@needs_nagios
@pytest.mark.parametrize("document", documents_with_objects())
def test_the_documented_commands_run_as_nagios_expands_them(
        document: str, tmp_path: Path, command: Any, clean_env: dict[str, str], redis_url: str,
        publish: Any, report: Any, make_collector: Any) -> None:
    for host in ("bbs-01", "mtbbs-central"):
        publish(report(host, 1, disk=50.0))
    collector = make_collector(name="nagios-test")
    collector.drain()
    collector.heartbeat()
    config = tmp_path / "mtbbs-monitor.toml"
    config.write_text(f'[redis]\nurl = "{redis_url}"\n')
    prefix = str(Path(command("mtbbs-collector")).parent) + "/"
    blocks = [directives(b) for b in define_blocks(document) if b.startswith("define command")]
    assert blocks
    for block in blocks:
        line = expand(block["command_line"], "bbs-01", ["85", "95"], prefix, config)
        done = subprocess.run(shlex.split(line), capture_output=True, text=True,
                              env=clean_env, timeout=60, check=False)
        first = done.stdout.splitlines()[0] if done.stdout else ""
        assert PLUGIN_FIRST_LINE.match(first), (line, done.stdout, done.stderr)
        # The configuration was read: the fleet is there, all well.
        assert done.returncode == 0 and first.startswith("MTBBS OK - "), (line, done.stdout)
