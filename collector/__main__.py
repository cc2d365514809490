"""``python -m collector``: the same as the ``mtbbs-collector`` command."""

from __future__ import annotations

import sys

from collector.cli import main

sys.exit(main(None))
