#!/bin/sh
# Install mtbbs-monitor into .venv and start the whole stack on this machine:
# an embedded Redis, the collector, an alerter worker, an agent and the demo
# BBS. Arguments are passed to `mtbbs-monitor up`. Ctrl-C stops everything.
set -eu
cd "$(dirname "$0")/.."
LOCK=requirements/run.txt
. scripts/bootstrap.sh
VENV=${MTBBS_VENV:-.venv}
exec "$VENV/bin/mtbbs-monitor" up --demo "$@"
