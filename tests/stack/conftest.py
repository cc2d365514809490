"""Helpers of the stack tests: a small YAML reader and a CLI invocation checker.

PyYAML is not a dependency, so ``docker-compose.yml`` is written in a small
subset of YAML that :func:`parse_yaml` reads: block mappings, block
sequences of scalars, JSON-style flow sequences, quoted or plain scalars and
comments. When PyYAML happens to be installed the tests also compare both
readings, which keeps this reader honest.

``check_invocation(argv)`` proves that a command line is accepted by the
real argument parser of our console script, without running the command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

# -- a YAML subset ------------------------------------------------------------


class YamlSubsetError(ValueError):
    """The text uses YAML this reader does not support."""


def _strip_comment(line: str) -> str:
    quoted: str | None = None
    index = 0
    while index < len(line):
        char = line[index]
        if quoted:
            if char == "\\" and quoted == '"':
                index += 1  # skip the escaped character
            elif char == quoted:
                quoted = None
        elif char in "\"'" and (index == 0 or line[index - 1] in " \t:[,"):
            quoted = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index].rstrip()
        index += 1
    return line.rstrip()


def _scalar(text: str, number: int) -> Any:
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            raise YamlSubsetError(f"line {number}: flow sequences must be JSON") from None
        if not isinstance(value, list):
            raise YamlSubsetError(f"line {number}: not a list")
        return value
    if text.startswith('"'):
        try:
            return json.loads(text)
        except ValueError:
            raise YamlSubsetError(f"line {number}: bad double-quoted string") from None
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"line {number}: bad single-quoted string")
        return text[1:-1].replace("''", "'")
    if text[:1] in ("&", "*", "!", "{", "|", ">"):
        raise YamlSubsetError(f"line {number}: unsupported YAML: {text[:20]}")
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def parse_yaml(text: str) -> Any:
    """Read the YAML subset described above."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError(f"line {number}: tab in indentation")
        line = _strip_comment(raw)
        if line.strip() in ("", "---"):
            continue
        lines.append((number, len(line) - len(line.lstrip(" ")), line.strip()))

    def block(index: int, indent: int) -> tuple[Any, int]:
        number, _, content = lines[index]
        if content.startswith("- ") or content == "-":
            items: list[Any] = []
            while index < len(lines) and lines[index][1] == indent \
                    and lines[index][2].startswith("-"):
                item = lines[index][2][1:].strip()
                if re.match(r"^[\w.-]+:(\s|$)", item):
                    raise YamlSubsetError(f"line {lines[index][0]}: mappings in sequences")
                items.append(_scalar(item, lines[index][0]))
                index += 1
            return items, index
        mapping: dict[str, Any] = {}
        while index < len(lines) and lines[index][1] == indent:
            number, _, content = lines[index]
            match = re.match(r'^("[^"]*"|[^\s:][^:]*?):(?:\s+(.*))?$', content)
            if match is None:
                raise YamlSubsetError(f"line {number}: expected 'key: value'")
            key = json.loads(match.group(1)) if match.group(1).startswith('"') \
                else match.group(1)
            if key in mapping:
                raise YamlSubsetError(f"line {number}: duplicate key {key!r}")
            rest = match.group(2)
            index += 1
            if rest is None or rest == "":
                if index < len(lines) and lines[index][1] > indent:
                    mapping[key], index = block(index, lines[index][1])
                elif index < len(lines) and lines[index][1] == indent \
                        and lines[index][2].startswith("- "):
                    # YAML allows a sequence at the key's own indentation.
                    mapping[key], index = block(index, indent)
                else:
                    mapping[key] = None
            else:
                mapping[key] = _scalar(rest, number)
        if index < len(lines) and lines[index][1] > indent:
            raise YamlSubsetError(f"line {lines[index][0]}: unexpected indentation")
        return mapping, index

    if not lines:
        return None
    value, end = block(0, lines[0][1])
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end][0]}: unexpected dedent")
    return value


def load_yaml(path: Path) -> Any:
    """The document at ``path``, read by our subset reader (and PyYAML if present)."""
    text = path.read_text(encoding="utf-8")
    ours = parse_yaml(text)
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return ours
    assert yaml.safe_load(text) == ours, "the subset reader disagrees with PyYAML"
    return ours


# -- command lines --------------------------------------------------------------


class _Parsed(BaseException):
    """Raised (past ``guarded``, which catches Exception) once argv has parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


def console_scripts() -> dict[str, str]:
    """Our console scripts: name -> ``module:function``."""
    scripts = importlib.metadata.entry_points(group="console_scripts")
    ours = {}
    for entry in scripts:
        if entry.dist is not None and entry.dist.name == "mtbbs-monitor":
            ours[entry.name] = entry.value
    return ours


class _Parser(BaseException):
    """Carries the parser out of a ``main`` that was only asked to build it."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser")
        self.parser = parser


def parser_of(name: str) -> argparse.ArgumentParser:
    """The top-level argument parser of our console script ``name``.

    ``build_parser()`` when the module has one; otherwise ``main`` is run
    and stopped the moment it asks its parser to parse anything.
    """
    scripts = console_scripts()
    module_name, _, function = scripts[name].partition(":")
    module = importlib.import_module(module_name)
    build = getattr(module, "build_parser", None)
    if build is not None:
        parser: argparse.ArgumentParser = build()
        return parser
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        raise _Parser(self)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        getattr(module, function)([])
    except _Parser as found:
        return found.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    pytest.fail(f"{name}: main() never parsed its arguments with argparse")


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    """The first-level sub-commands of ``parser`` ([] when it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def check_invocation(argv: Sequence[str]) -> argparse.Namespace | None:
    """Fail the test unless our CLI ``argv[0]`` accepts the arguments ``argv[1:]``.

    Uses the module's ``build_parser()`` when it has one; otherwise runs its
    ``main`` with argparse's ``parse_args`` intercepted right after parsing,
    so nothing of the command itself runs. Returns the parsed namespace.
    """
    name = Path(argv[0]).name
    scripts = console_scripts()
    if name not in scripts:
        pytest.fail(f"{name} is not one of our commands ({', '.join(sorted(scripts))})")
    module_name, _, function = scripts[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        pytest.fail(f"{name}: module {module_name} cannot be imported ({exc})")
    args = list(argv[1:])
    build: Callable[[], argparse.ArgumentParser] | None = getattr(module, "build_parser", None)
    try:
        if build is not None:
            return build().parse_args(args)
        original = argparse.ArgumentParser.parse_args

        def intercept(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
            raise _Parsed(original(self, *a, **k))

        argparse.ArgumentParser.parse_args = intercept  # type: ignore[method-assign]
        try:
            getattr(module, function)(args)
        finally:
            argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as exc:
        pytest.fail(f"{' '.join(argv)}: rejected by the parser (exit {exc.code})")
    # main returned without parsing through argparse: fall back on the
    # installed script's own validation of the arguments.
    installed = Path(sys.executable).parent / name
    result = subprocess.run([str(installed), *args, "--help"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} --help: {result.stderr}"
    return None


@pytest.fixture
def valid_invocation() -> Callable[[Sequence[str]], argparse.Namespace | None]:
    """``valid_invocation(argv)`` fails the test unless ``argv`` parses."""
    return check_invocation


@pytest.fixture
def our_commands() -> list[tuple[str, str | None]]:
    """(console script, sub-command or None) of every command we install."""
    listed: list[tuple[str, str | None]] = []
    for script in sorted(console_scripts()):
        subs = subcommands(parser_of(script))
        listed += [(script, sub) for sub in subs] if subs else [(script, None)]
    return listed


@pytest.fixture
def yaml_reader() -> Callable[[Path], Any]:
    """``yaml_reader(path)`` reads our YAML subset."""
    return load_yaml


@pytest.fixture
def repo_root() -> Path:
    """The repository's top directory."""
    return ROOT
