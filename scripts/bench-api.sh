#!/usr/bin/env bash
# API benchmark: p50/p99 and requests/s of a 24-hour, 1-minute, top-10 query
# at 1, 16 and 64 clients next to one direct ClickHouse query for the same
# answer, and the latest endpoint's p99 at 100 clients. Prints figures.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/up.sh clickhouse
# shellcheck disable=SC1091
. .strata/stack.env
exec cargo bench -p strata-serving --bench api
