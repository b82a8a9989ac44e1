#!/usr/bin/env bash
# Prints the path of a `consul` binary, installing one into .consul/ if there is none on PATH.
# Debian bookworm has no consul package; bullseye has consul 1.8.7, a self-contained binary. We fetch
# that .deb with a private apt configuration that reuses this machine's own Debian mirror, and unpack
# it into the project (nothing is installed system-wide).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.consul"

if command -v consul >/dev/null 2>&1; then command -v consul; exit 0; fi
if [ -x "$dest/bin/consul" ]; then echo "$dest/bin/consul"; exit 0; fi

mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  # deb822 stanzas: take the URIs of a stanza whose suites are not the security suite
  mirror=$(awk 'BEGIN{RS=""} /Suites:/ && !/-security/ { if (match($0, /URIs: *[^ \n]+/)) { s=substr($0, RSTART, RLENGTH); sub(/URIs: */, "", s); print s; exit } }' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
  mirror=$(awk '$1=="deb" && $3 !~ /security/ { for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  echo "install_consul.sh: no Debian mirror found in /etc/apt/sources.list{,.d}; install consul and put it on PATH" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/etc"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $mirror bullseye main" > "$work/etc/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/etc/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o "Dir::State::Status=/dev/null"
          -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1")
echo "install_consul.sh: fetching consul from bullseye ($mirror)" >&2
apt-get "${apt_opts[@]}" -qq update >&2
(cd "$work" && apt-get "${apt_opts[@]}" -qq download consul >&2)
rm -rf "$dest" && mkdir -p "$dest/bin"
dpkg -x "$work"/consul_*.deb "$dest/pkg"
ln -s "$dest/pkg/usr/bin/consul" "$dest/bin/consul"
"$dest/bin/consul" version >&2
echo "$dest/bin/consul"
