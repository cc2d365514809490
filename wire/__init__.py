"""The contract shared by the agent, the collector and the alerter.

Nothing else is shared between those three packages: message types and their
msgpack codec, Redis key and stream names, the status enum, configuration
loading and the conventions of our command lines all live here, and this
package imports nothing else of ours.
"""

from __future__ import annotations

from wire.errors import ConfigError, DecodeError, WireError
from wire.status import Status

__all__ = ["ConfigError", "DecodeError", "Status", "WireError"]
