"""Exceptions of the contract: few of them, each carrying its data."""

from __future__ import annotations


class WireError(Exception):
    """Base of every error the contract raises on purpose."""


class DecodeError(WireError):
    """A message could not be decoded or failed validation.

    ``reason`` is a short, stable phrase suitable for a dead-letter entry.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigError(WireError):
    """A configuration value is missing, malformed or out of range.

    ``setting`` names it the way a sysop writes it (``agent.interval``).
    """

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem
