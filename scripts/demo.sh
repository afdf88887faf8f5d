#!/usr/bin/env bash
#
# scripts/demo.sh - run Strata on local defaults, from a fresh Debian machine.
#
# Starts the local stack (ClickHouse, a Kafka-compatible broker, S3), builds
# Strata, validates strata.toml, creates the ClickHouse tables and publishes a
# synthetic clickstream. Arguments are passed to `strata generate`
# (default: 20,000 events at 2,000/s).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export STRATA_HOME="${STRATA_HOME:-$PWD/.strata}"
log() { printf '[strata-demo] %s\n' "$*"; }

deploy/local/up.sh
# shellcheck disable=SC1091
. "$STRATA_HOME/stack.env"

log "building strata (release)"
cargo build --release --locked --bin strata
strata=target/release/strata

"$strata" validate
"$strata" schemas check
"$strata" init
if [ "$#" -eq 0 ]; then
  set -- --events 20000 --rate 2000 --malformed 0.01 --invalid 0.01 --late 0.01
fi
"$strata" generate "$@"

log "done. Look at the tables:"
log "  curl -s '$STRATA_CLICKHOUSE_URL/?query=SHOW+TABLES+FROM+strata'"
