#!/usr/bin/env bash
# Freshness: produced -> visible in ClickHouse, the API's query and its
# latest answer, at a steady 5,000 events/s for 2 minutes, with the
# reference config (benches/freshness.rs). Purges the local Tansu broker
# first (it slows down as its SQLite file grows). Prints p50/p99/max per
# path and what each stage costs; asserts nothing about them.
#   scripts/bench-freshness.sh
#   STRATA_BENCH_SECONDS=30 STRATA_BENCH_RATE=1000 scripts/bench-freshness.sh
#   STRATA_BENCH_EMIT_INTERVAL=250ms STRATA_BENCH_LATEST_REFRESH=250ms scripts/bench-freshness.sh
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/down.sh kafka --purge >/dev/null
deploy/local/up.sh
# shellcheck disable=SC1091
. .strata/stack.env
exec cargo bench --bench freshness
