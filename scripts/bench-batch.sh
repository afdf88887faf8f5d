#!/usr/bin/env bash
# Batch recompute benchmark: Strata (Polars + shared aggregates) against
# DuckDB over the same 10 M archived events. Prints figures; asserts nothing.
#   scripts/bench-batch.sh            (STRATA_BENCH_EVENTS=1000000 for a quick run)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.strata/tools/bench-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet duckdb
fi
exec cargo bench -p strata-batch --bench recompute -- --duckdb "$PWD/$venv/bin/python"
