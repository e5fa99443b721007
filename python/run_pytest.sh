#!/usr/bin/env bash
# Runs python/tests under Debian's python3 (numpy, torch and pytest from Debian's packages)
# against the package built by //python:package. Bazel runs this from the runfiles root.
set -euo pipefail
export PYTHONPATH="$PWD/python/pkg"
export SAFESHARD_CLI="$PWD/cli/safeshard"
export PYTHONDONTWRITEBYTECODE=1
exec /usr/bin/python3 -m pytest -q -p no:cacheprovider --basetemp="${TEST_TMPDIR:-/tmp}/pytest" \
  "$PWD/python/tests"
