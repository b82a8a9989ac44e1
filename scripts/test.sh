#!/usr/bin/env bash
# The whole test suite: installs dependencies and Consul as needed, then runs pytest.
# Tests start their own Consul agent, workers and wrappers on free loopback ports.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/setup.sh" --models
cd "$root"
exec python3 -m pytest "$@"
