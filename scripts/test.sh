#!/usr/bin/env bash
# The whole test suite: installs dependencies into .venv/ and Consul as needed, then runs pytest.
# Tests start their own Consul agent, workers and wrappers on free loopback ports.
#   scripts/test.sh                 everything
#   scripts/test.sh tests/unit      the in-process unit tests only (seconds)
#   scripts/test.sh -k routing -x   any pytest options
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh" --tests
cd "$root"
exec "$root/.venv/bin/python" -m pytest "$@"
