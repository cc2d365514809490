"""The one status scale of the project, with Nagios's numeric codes."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class Status(IntEnum):
    """OK, WARNING, CRITICAL or UNKNOWN; the value is the Nagios exit code.

    ``worst`` follows the plugin convention that UNKNOWN outranks CRITICAL:
    a result we cannot read is never reported as better than a bad one.
    """

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @classmethod
    def worst(cls, statuses: Iterable[Status]) -> Status:
        """The most severe of ``statuses``; OK when there are none."""
        return max(statuses, default=cls.OK)

    @classmethod
    def parse(cls, text: str) -> Status:
        """Read a status name as stored in Redis; anything else is UNKNOWN."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            return cls.UNKNOWN
