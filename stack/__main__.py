"""``python -m stack`` runs ``mtbbs-monitor``."""

from __future__ import annotations

import sys

from stack.cli import main

sys.exit(main(None))
