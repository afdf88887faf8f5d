#!/usr/bin/env bash
# Split batch runs at scale: writes 100 M synthetic events over 30 days
# straight to Parquet in the archive layout (once, kept under
# .strata/bench/; about 2 GiB), then recomputes the three metrics over
# 1, 7 and 30 days chunk after chunk, each range in a fresh process, and
# prints events/s and peak RSS per range. Prints figures; asserts nothing.
#   STRATA_BENCH_EVENTS=10000000 scripts/bench-batch-split.sh   (quick run)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p strata-batch --bench split
