#!/usr/bin/env bash
# Batch recompute benchmark: Strata (Polars read + shared aggregates) against
# DuckDB, Polars' lazy engine and chDB (ClickHouse in process) over the same
# 10 M archived events, with the same number of threads, every engine run 3
# times per metric (STRATA_BENCH_ROUNDS). Ends with a table per metric (the
# median run's seconds with the range, rows, peak RSS, Strata / fastest
# peer). Prints figures; asserts nothing.
#   scripts/bench-batch.sh            (STRATA_BENCH_EVENTS=1000000 for a quick run)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.strata/tools/bench-venv
# Exact versions, so figures stay comparable from run to run; pyarrow takes
# DuckDB's and chDB's results as Arrow tables. A changed pin reinstalls.
peers="duckdb==2.0.1 polars==2.1.0 chdb==4.4.0 pyarrow==26.0.1"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/pinned" 2>/dev/null)" != "$peers" ]; then
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # one argument per pinned package
  "$venv/bin/pip" install --quiet $peers
  echo "$peers" >"$venv/pinned"
fi
exec cargo bench -p strata-batch --bench recompute -- --peers "$PWD/$venv/bin/python"
