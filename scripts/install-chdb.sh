#!/usr/bin/env bash
# scripts/install-chdb.sh - a Python venv with chDB (a current ClickHouse
# engine, in process, from PyPI) for tests/chdb_compat.rs, in
# $STRATA_HOME/tools/chdb-venv. Pinned, so the ClickHouse version the test
# names stays put; a changed pin reinstalls. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STRATA_HOME="${STRATA_HOME:-$PWD/.strata}"
venv="$STRATA_HOME/tools/chdb-venv"
pin="chdb==4.4.0"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/pinned" 2>/dev/null)" = "$pin" ]; then
  exit 0
fi
echo "[strata-chdb] installing $pin into $venv"
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv --help >/dev/null 2>&1 ||
  ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  # Debian splits venv (and its ensurepip) out of python3.
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv </dev/null ||
    { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv </dev/null; }
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "$pin"
echo "$pin" >"$venv/pinned"
