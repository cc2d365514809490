"""``python -m alerter``: the same as ``mtbbs-alerter``."""

from __future__ import annotations

import sys

from alerter.cli import main

sys.exit(main(None))
