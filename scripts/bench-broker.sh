#!/usr/bin/env bash
# Speed layer from the broker: `strata speed` on a topic pre-filled with
# 1 M events (STRATA_BENCH_EVENTS) against a bare rdkafka consumer reading
# the same topic, in one run, on the local Tansu broker and ClickHouse.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/up.sh clickhouse kafka
# shellcheck disable=SC1091
. .strata/stack.env
exec cargo bench -p strata-speed --bench broker
