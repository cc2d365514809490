#!/bin/sh
# Create (or reuse) the project's virtual environment and install into it.
# Sourced by up.sh and test.sh, which set EXTRA to the pip extra to install.
set -eu
PYTHON=${PYTHON:-python3}
VENV=${MTBBS_VENV:-.venv}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "mtbbs-monitor needs Python 3.11 or newer as \$PYTHON (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian and Ubuntu ship venv separately from python3.
        rm -rf "$VENV"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "installing python3-venv (the venv module is missing)" >&2
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            "$PYTHON" -m venv "$VENV"
        else
            echo "the venv module is missing: run 'sudo apt-get install python3-venv' first" >&2
            exit 1
        fi
    fi
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# A stale build/ directory can carry modules that were since removed.
rm -rf build ./*.egg-info
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ".[$EXTRA]"
