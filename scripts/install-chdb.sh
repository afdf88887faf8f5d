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
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "$pin"
echo "$pin" >"$venv/pinned"
