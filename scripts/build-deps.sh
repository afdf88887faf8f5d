#!/usr/bin/env bash
# scripts/build-deps.sh - the system packages a build of Strata needs beyond
# Rust: a C toolchain, pkg-config and OpenSSL's headers (librdkafka is built
# with TLS and SASL/SCRAM against the system OpenSSL). Installs the missing
# ones with apt-get on Debian/Ubuntu; elsewhere says what to install.
# Called by scripts/test.sh and scripts/demo.sh before building.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
((${#missing[@]})) || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "[strata-build] missing ${missing[*]}: install a C compiler, pkg-config and OpenSSL's development files, then rerun" >&2
  exit 1
fi
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
echo "[strata-build] installing with apt-get: ${missing[*]}"
if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null
fi
