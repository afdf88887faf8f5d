#!/usr/bin/env bash
#
# scripts/demo.sh - the whole Strata platform on local defaults, from a
# fresh Debian machine.
#
# Installs (when missing) and starts ClickHouse on loopback (deploy/local/up.sh
# clickhouse), builds Strata, checks strata.toml and the contracts, then runs
# `strata demo`: a generator, the speed layer, the Parquet archive, the batch
# layer (every minute) and the REST API in one process, over librdkafka's
# in-process Kafka mock cluster (no broker to install). Ctrl-C stops it.
# Arguments go to `strata demo` (e.g. --rate 500, --duration 5m,
# --external-kafka to use kafka.brokers / STRATA_KAFKA_BROKERS instead).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export STRATA_HOME="${STRATA_HOME:-$PWD/.strata}"
log() { printf '[strata-demo] %s\n' "$*"; }

deploy/local/up.sh clickhouse
# shellcheck disable=SC1091
. "$STRATA_HOME/stack.env"

# The dev profile (dependencies optimised, see Cargo.toml) shares its build
# with scripts/test.sh and is plenty for the demo's load.
scripts/build-deps.sh
log "building strata (the first build takes a while)"
cargo build --locked --bin strata
strata=target/debug/strata

"$strata" validate
"$strata" schemas check
log "starting the demo: API on http://127.0.0.1:8080, Ctrl-C to stop"
exec "$strata" demo "$@"
