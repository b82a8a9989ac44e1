#!/usr/bin/env bash
# Installs the Debian packages of scripts/system-packages.txt whose command is missing (apt-get, as root).
# Without root or apt-get it names what is missing and carries on: the tests that need it then fail
# with a message saying which command they did not find.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
missing=()
while read -r package command _; do
  case "$package" in ''|'#'*) continue ;; esac
  command -v "$command" >/dev/null 2>&1 || missing+=("$package")
done < "$root/scripts/system-packages.txt"
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "install_system_packages.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "install_system_packages.sh: missing Debian packages: ${missing[*]} (install them with apt-get as root)" >&2
fi
