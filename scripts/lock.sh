#!/bin/sh
# Refresh the dependency locks from pyproject.toml, on purpose and only here:
#   requirements/test.txt  every runtime, embedded-Redis and test dependency
#                          (ruff, mypy and pytest included), what test.sh installs
#   requirements/run.txt   what the programs need (with the embedded Redis),
#                          what up.sh and the Docker image install; always the
#                          same versions as test.txt
# Each pin carries the hashes of its published files, so an install checks
# every download. Pass --upgrade to move every pin to the newest release that
# pyproject's ranges allow; without it, existing pins are kept where they fit.
# Then run ./scripts/test.sh and commit pyproject.toml and requirements/ together.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TOOLS=${MTBBS_LOCK_VENV:-.venv-lock}
if [ ! -x "$TOOLS/bin/pip-compile" ]; then
    "$PYTHON" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "pip-tools>=7.4"
fi
COMPILE="$TOOLS/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --no-header"
mkdir -p requirements
# shellcheck disable=SC2086 # COMPILE is a command line by design
$COMPILE "$@" --extra embedded --extra test --output-file requirements/test.txt pyproject.toml
# The runtime lock is constrained by the test lock, so both name one version
# of every package they share.
# shellcheck disable=SC2086
$COMPILE --extra embedded --constraint requirements/test.txt \
    --output-file requirements/run.txt pyproject.toml
echo "locked: requirements/test.txt and requirements/run.txt"
