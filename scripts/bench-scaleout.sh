#!/usr/bin/env bash
# Speed-layer scale-out: `strata speed` as 1 process, then as 2 processes
# in one consumer group, reading the same pre-filled topic (3 M records,
# STRATA_BENCH_EVENTS; 48 partitions, STRATA_BENCH_PARTITIONS) from the
# in-process mock cluster into the local ClickHouse, in one run. Process i
# is pinned to CPU i (STRATA_BENCH_PIN=0 to let them float). Prints
# figures; asserts nothing about them.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/up.sh clickhouse
# shellcheck disable=SC1091
. .strata/stack.env
export STRATA_BENCH_PIN="${STRATA_BENCH_PIN:-1}"
exec cargo bench --bench scaleout
