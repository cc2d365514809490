#!/bin/sh
# Create (or reuse) the project's virtual environment and install into it the
# locked dependencies, then the project itself. Sourced by up.sh and test.sh,
# which set LOCK to the lock they need (requirements/run.txt or test.txt).
#
# Every version comes from the lock, with hashes checked, so every machine gets
# the same packages until someone runs scripts/lock.sh on purpose. When the
# environment already holds this lock and this checkout, nothing is installed
# again, so a second start works without a network.
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

# What is installed is recorded as fingerprints of the lock and of the
# project's own files (each file's name, size and checksum, so a renamed or
# new empty module counts too); a match means there is nothing to do.
fingerprint() {
    # shellcheck disable=SC2068 # the arguments are file and folder names
    find $@ -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print 2>/dev/null \
        | LC_ALL=C sort | xargs cksum | cksum
}
PIP="$VENV/bin/python -m pip --quiet --disable-pip-version-check"
LOCK_STAMP="$VENV/.mtbbs-lock"
SOURCE_STAMP="$VENV/.mtbbs-source"
# test.txt holds every package of run.txt at the same version (a test checks
# it), so an environment made from test.txt serves up.sh as it is.
locks_now=$(fingerprint requirements)
read -r installed_lock installed_locks 2>/dev/null < "$LOCK_STAMP" || installed_lock=
if [ "${installed_locks:-}" != "$locks_now" ] \
        || { [ "$installed_lock" != "$LOCK" ] && [ "$installed_lock" != requirements/test.txt ]; }; then
    echo "installing the locked dependencies from $LOCK into $VENV" \
         "(the first time takes one to three minutes)" >&2
    if [ -n "$installed_lock" ] && [ "${installed_locks:-}" != "$locks_now" ]; then
        # A package dropped from the lock must not linger: a changed lock gets
        # a new environment rather than an install on top of the old one.
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    rm -f "$SOURCE_STAMP"
    # --no-deps: the lock lists every package, its dependencies included.
    $PIP install --require-hashes --no-deps -r "$LOCK"
    echo "$LOCK $locks_now" > "$LOCK_STAMP"
fi
source_now=$(fingerprint pyproject.toml README.md wire agent collector alerter stack demobbs)
if [ "$(cat "$SOURCE_STAMP" 2>/dev/null)" != "$source_now" ]; then
    # A stale build/ directory can carry modules that were since removed.
    rm -rf build ./*.egg-info
    # The build backend (setuptools) comes from the lock, so building the
    # project needs no download.
    $PIP install --no-deps --no-build-isolation --no-index .
    rm -rf build ./*.egg-info
    echo "$source_now" > "$SOURCE_STAMP"
fi
