#!/usr/bin/env python3
"""Compatibility wrapper: ``python scripts/health_check.py`` as in the seed.

The check itself is the installed ``mtbbs-health-check`` command
(:mod:`agent.healthcheck_cli`); this file only keeps the seed's cron jobs,
Nagios wrappers and Zabbix user parameters working unchanged.
"""

from __future__ import annotations

import sys

try:
    from agent.healthcheck_cli import main
except ImportError as exc:
    print(f"error: the mtbbs-monitor package is not installed for {sys.executable} ({exc})",
          file=sys.stderr)
    sys.exit(3)

if __name__ == "__main__":
    sys.exit(main(None))
