"""README.md, README.ja.md and the pages of docs/ stay true to the code.

* README.md opens with the two commands of a fresh clone;
* the configuration reference of docs/configuration.md and
  docs/configuration.ja.md is the one the settings code generates;
* every Redis key of ``wire.keys.KeySpace`` and every command and
  sub-command is in both READMEs' tables;
* every page of docs/ is linked from the README of its language, and every
  relative link of every page reaches an existing file (and heading);
* every command line in a shell example of any page parses with the
  command's parser;
* every jq path of the examples returns a value from real
  ``mtbbs-health-check --json`` output (with jq when installed, and in Python
  in any case).
"""

from __future__ import annotations

import inspect
import json
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import redis

from stack import reference
from wire.keys import KeySpace
from wire.messages import SessionInfo
from wire.state import session_text

READMES = ("README.md", "README.ja.md")
FIRST_COMMANDS = ["./scripts/up.sh", "./scripts/test.sh"]
ROOT = Path(__file__).resolve().parents[2]
# Every page: the READMEs and docs/, English and Japanese (``*.ja.md``).
PAGES = tuple(sorted([*READMES, *(p.relative_to(ROOT).as_posix()
                                  for p in (ROOT / "docs").glob("*.md"))]))


def language_pages(language: str) -> list[str]:
    """The pages a reader of ``language`` ("en" or "ja") is sent to."""
    japanese = [name for name in PAGES if name.endswith(".ja.md")]
    return japanese if language == "ja" else [name for name in PAGES
                                              if name not in japanese]


def read(root: Path, name: str) -> str:
    return (root / name).read_text(encoding="utf-8")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


@pytest.fixture(params=READMES)
def readme(request: pytest.FixtureRequest, repo_root: Path) -> str:
    return read(repo_root, request.param)


@pytest.fixture(params=PAGES)
def page(request: pytest.FixtureRequest, repo_root: Path) -> str:
    return read(repo_root, request.param)


def test_readme_opens_with_the_two_commands(repo_root: Path) -> None:
    text = read(repo_root, "README.md")
    _, first = code_blocks(text)[0]
    commands = [line.split("#")[0].strip() for line in first.strip().splitlines()]
    assert commands == FIRST_COMMANDS
    # Nothing but the title and one sentence before them.
    assert text.index("```") < 300


@pytest.mark.parametrize("name", reference.DOCUMENTS)
def test_configuration_reference_is_current(repo_root: Path, name: str) -> None:
    assert reference.missing_sections() == []
    assert reference.current_block(read(repo_root, name)) == reference.block(), \
        "run: python scripts/config_reference.py --write"


def test_the_configuration_pages_are_the_pages_of_both_languages() -> None:
    assert set(reference.DOCUMENTS) == {"docs/configuration.md", "docs/configuration.ja.md"}
    assert set(reference.DOCUMENTS) <= set(PAGES)


def test_every_settings_class_is_in_the_reference() -> None:
    registered = {(module, name) for _, module, name in reference.SECTIONS}
    assert reference.discover_settings_classes() <= registered


def key_patterns() -> dict[str, str]:
    """KeySpace method -> its key with ``<parameter>`` placeholders."""
    keys = KeySpace()
    patterns = {}
    for name, method in inspect.getmembers(keys, inspect.ismethod):
        # Not keys: a host's pair of streams (each documented on its own),
        # the glob that finds them and the parser of their names.
        if name.startswith("_") or name in ("host_streams", "host_streams_pattern",
                                            "stream_host"):
            continue
        parameters = list(inspect.signature(method).parameters)
        patterns[name] = method(*[f"<{p}>" for p in parameters])
    return patterns


def test_every_redis_key_is_documented(readme: str) -> None:
    patterns = key_patterns()
    assert len(patterns) >= 20
    missing = sorted(f"{name}: {key}" for name, key in patterns.items()
                     if f"`{key}`" not in readme)
    assert not missing, "add these keys to the README's key table"


def test_every_command_is_documented(readme: str,
                                     our_commands: list[tuple[str, str | None]]) -> None:
    listed = our_commands
    assert len(listed) >= 10
    missing = [f"{script} {sub or ''}".strip() for script, sub in listed
               if (f"{script} {sub}" if sub else script) not in readme]
    assert not missing


SHELL_LANGUAGES = {"sh", "bash", "shell", "console", ""}
# One of our commands where a command starts: at the start of a line, after
# a pipe, ``;``, ``&&``, ``$(``, ``sudo``, ``docker compose exec <service>``,
# Zabbix's ``key,`` or Nagios's ``command_line``, with or without a path.
OURS = re.compile(r"(?:^\s*|[;|&(`,]\s*|\$\(\s*|\bsudo\s+|\bexec\s+\S+\s+|"
                  r"\bcommand_line\s+)(?:\S*/)?"
                  r"((?:mtbbs-health-check|mtbbs-agent|mtbbs-collector|mtbbs-alerter|"
                  r"mtbbs-monitor|mtbbs-demo-bbs)(?=\s|$)[^|;&>)`#\n]*)")


def example_command_lines(text: str) -> list[str]:
    lines = []
    for language, body in code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        joined = body.replace("\\\n", " ")
        for line in joined.splitlines():
            if line.lstrip().startswith("#"):
                continue
            # A usage synopsis ("acl [--role R]") shows the syntax, not a call.
            if "[-" in line:
                continue
            # Redirections are the shell's, not arguments.
            line = re.sub(r"\s\d*>>?(&\d|\s*\S+)", " ", line)
            for match in OURS.finditer(line):
                lines.append(match.group(1).strip())
    return lines


# Placeholders and shell variables stand for values a sysop fills in; so do
# Nagios macros ($HOSTNAME$, $ARG1$: a host or a number, so 1 stands for them).
PLACEHOLDER = re.compile(r"\$\{?\w+\}?|<[^>]+>")
NAGIOS_MACRO = re.compile(r"\$\w+\$")


def fill_in(part: str) -> str:
    return PLACEHOLDER.sub("x", NAGIOS_MACRO.sub("1", part))


def test_every_example_command_parses(page: str, valid_invocation: Any) -> None:
    for line in example_command_lines(page):
        argv = [fill_in(part) for part in shlex.split(line)]
        valid_invocation(argv)


@pytest.mark.parametrize("language", ["en", "ja"])
def test_each_language_has_its_examples(repo_root: Path, language: str) -> None:
    """The examples moved with their sections: each language keeps them all."""
    texts = [read(repo_root, name) for name in language_pages(language)]
    assert sum(len(example_command_lines(text)) for text in texts) >= 20
    assert sum(len(jq_examples(text)) for text in texts) >= 5


def test_usage_synopses_and_macros_are_not_examples() -> None:
    text = "```\nmtbbs-monitor acl [--role agent|all]\nmtbbs-agent spool --json\n```\n"
    assert example_command_lines(text) == ["mtbbs-agent spool --json"]
    assert fill_in("$ARG1$") == "1"
    assert fill_in("${HOST}") == "x"
    assert fill_in("<host>") == "x"


# -- jq paths -------------------------------------------------------------------

JQ = re.compile(r"mtbbs-health-check([^|\n]*)\|\s*jq -r '([^']+)'")


def jq_examples(text: str) -> list[tuple[str, str]]:
    """(health-check arguments, jq filter) of every example that pipes into jq."""
    found = []
    for _, body in code_blocks(text):
        for match in JQ.finditer(body.replace("\\\n", " ")):
            found.append((match.group(1), match.group(2)))
    return found


def python_jq(document: Any, program: str) -> Any:
    """The value of a jq filter of the form ``.a.b.c``, ``.a.b // default``
    or ``.a.b | values`` (nothing, "", for null)."""
    path, bar, rest = (part.strip() for part in program.partition("|"))
    if bar:
        assert rest == "values", f"unsupported filter {program}"
        value = python_jq(document, path)
        return "" if value is None else value
    path, _, default = (part.strip() for part in program.partition("//"))
    assert re.fullmatch(r"(\.[A-Za-z_][A-Za-z0-9_]*)+", path), f"unsupported filter {program}"
    value = document
    for part in path.split(".")[1:]:
        value = value.get(part) if isinstance(value, dict) else None
    if value in (None, False) and default:
        return json.loads(default)
    return value


@pytest.fixture(scope="module")
def health_json(tmp_path_factory: pytest.TempPathFactory, redis_server: Any) -> str:
    """Real ``mtbbs-health-check --json`` output for a small BBS with sessions."""
    directory = tmp_path_factory.mktemp("bbs")
    database = directory / "mtbbs.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE users (id TEXT PRIMARY KEY)")
    bbs = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    keys = KeySpace()
    client = redis.Redis(port=redis_server.port)
    client.delete(keys.host_sessions("readme-bbs"))
    for number, user in enumerate(("guest", "taro")):
        info = SessionInfo(f"192.0.2.{number}:5000{number}", user, "logged_in", time.time())
        client.hset(keys.host_sessions("readme-bbs"), info.client_id, session_text(info))
    client.close()
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "mtbbs-health-check"), "--json", "--db",
             str(database), "--data-dir", str(directory), "--pid", str(bbs.pid),
             "--host", "readme-bbs", "--redis-url", redis_server.url],
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        bbs.kill()
        bbs.wait()
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_jq_paths_return_values(page: str, health_json: str) -> None:
    examples = jq_examples(page)
    document = json.loads(health_json)
    for arguments, program in examples:
        assert "--json" in arguments
        value = python_jq(document, program)
        assert value is not None and value != "", program


@pytest.mark.parametrize("language", ["en", "ja"])
def test_jq_prints_what_python_jq_finds(language: str, repo_root: Path,
                                        health_json: str) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq not installed")
    examples = [example for name in language_pages(language)
                for example in jq_examples(read(repo_root, name))]
    assert examples
    document = json.loads(health_json)
    for _, program in examples:
        value = python_jq(document, program)
        result = subprocess.run(["jq", "-r", program], input=health_json,
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        printed = result.stdout.strip()
        assert printed not in ("", "null"), program
        if isinstance(value, int | float) and not isinstance(value, bool):
            # jq prints 22.0 as 22: compare numbers as numbers.
            assert float(printed) == value, program
        else:
            assert printed == (json.dumps(value) if not isinstance(value, str)
                               else value), program


def test_zabbix_user_parameters_never_print_null(repo_root: Path) -> None:
    # A figure that was not measured: the item gets no value, not the text null.
    document = {"status": "WARNING", "health": {
        "database": {"healthy": False}, "disk_space": {"percent_used": None},
        "memory": {"process_rss_mb": None}, "sessions": {"active_sessions": None}}}
    programs = [program for page in ("docs/integrations.md", "docs/integrations.ja.md",
                                     "docs/healthcheck.md")
                for arguments, program in jq_examples(read(repo_root, page))
                if "UserParameter" in read(repo_root, page)]
    parameters = [line.split("jq -r ", 1)[1].strip("'")
                  for page in ("docs/integrations.md", "docs/integrations.ja.md",
                               "docs/healthcheck.md")
                  for line in read(repo_root, page).splitlines()
                  if line.startswith("UserParameter=")]
    assert len(parameters) == 15 and set(parameters) <= set(programs)
    for program in parameters:
        assert python_jq(document, program) != "null"
        assert python_jq(document, program) is not None
        if shutil.which("jq"):
            result = subprocess.run(["jq", "-r", program], input=json.dumps(document),
                                    capture_output=True, text=True, timeout=30, check=True)
            assert result.stdout.strip() != "null", program
    assert python_jq(document, ".health.database.healthy | values") is False


def test_python_jq_agrees_with_jq_on_defaults() -> None:
    document = {"a": {"b": None, "c": 3}}
    assert python_jq(document, ".a.b // 0") == 0
    assert python_jq(document, ".a.c") == 3
    assert python_jq(document, ".a.x") is None


# -- links ----------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to -."""
    kept = "".join(char for char in heading.strip().lower()
                   if char in " -_" or unicodedata.category(char)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", prose_keeping_headings(text), re.MULTILINE):
        name = slug(heading)
        number = 0
        while (f"{name}-{number}" if number else name) in found:
            number += 1
        found.add(f"{name}-{number}" if number else name)
    return found


def prose_keeping_headings(text: str) -> str:
    """The text without fenced code blocks (a heading keeps its code spans)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def relative_links(text: str) -> list[str]:
    return [target for target in LINK.findall(prose(text))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


@pytest.mark.parametrize("name", PAGES)
def test_every_relative_link_resolves(repo_root: Path, name: str) -> None:
    page_path = repo_root / name
    broken = []
    for target in relative_links(read(repo_root, name)):
        path, _, anchor = target.partition("#")
        destination = (page_path.parent / path).resolve() if path else page_path
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and \
                anchor not in anchors(destination.read_text(encoding="utf-8")):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_the_link_checker_sees_links_and_headings() -> None:
    text = "# A `b` c: d\n\nsee [x](docs/x.md#y), [web](https://example.org), `[no](z)`\n"
    assert relative_links(text) == ["docs/x.md#y"]
    assert anchors(text) == {"a-b-c-d"}
    assert slug("`mtbbs-collector status` — the Nagios/Icinga plugin") == \
        "mtbbs-collector-status--the-nagiosicinga-plugin"
    assert slug("Nagios・Zabbix・cron・メトリクス CSV・Prometheus 連携") == \
        "nagioszabbixcronメトリクス-csvprometheus-連携"


def test_every_page_is_linked_from_the_readme_of_its_language(repo_root: Path) -> None:
    """The README is the front door: no page of docs/ is left unreachable."""
    english = set(relative_links(read(repo_root, "README.md")))
    japanese = set(relative_links(read(repo_root, "README.ja.md")))
    english = {link.partition("#")[0] for link in english}
    japanese = {link.partition("#")[0] for link in japanese}
    for name in PAGES:
        if not name.startswith("docs/") or name.endswith(".ja.md"):
            continue
        assert name in english, f"README.md does not link {name}"
        translated = name.removesuffix(".md") + ".ja.md"
        assert (translated if translated in PAGES else name) in japanese, \
            f"README.ja.md does not link {translated if translated in PAGES else name}"
