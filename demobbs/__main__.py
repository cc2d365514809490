"""``python -m demobbs``: the same as ``mtbbs-demo-bbs``."""

from __future__ import annotations

import sys

from demobbs.server import main

sys.exit(main(None))
