#!/usr/bin/env bash
# ClickHouse ingest of speed-view rows on the local server: 10 M rows
# (STRATA_BENCH_ROWS) of `page_views_per_minute`'s speed table, 100 k group
# keys x 32 Kafka partitions, one-minute windows, sent over HTTP as
# RowBinary (the speed layer's format) in one client, in blocks of 100 k
# and of 1 M rows; prints rows/s per block size and the bytes per row on
# disk after OPTIMIZE FINAL. The rows are made by ClickHouse itself
# (numbers()), so the client only cuts and sends. Prints figures; asserts
# nothing. Uses (and drops) the database `strata_bench_insert`.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/local/up.sh clickhouse >/dev/null
# shellcheck disable=SC1091
. .strata/stack.env
CH="${STRATA_CLICKHOUSE_URL:-http://127.0.0.1:18123}/"
ROWS="${STRATA_BENCH_ROWS:-10000000}"
DB=strata_bench_insert
DATA="$(mktemp)"
trap 'rm -f "${DATA}"' EXIT
q() { curl -sSf "${CH}" --data-binary "$1"; }
COLUMNS="window_start_ms, window_end_ms, page, country, kafka_partition, agg_events, agg_duration_ms_count, agg_duration_ms_sum, agg_duration_ms_min, agg_duration_ms_max, first_offset, last_offset, version, retracted, is_final"

q "DROP DATABASE IF EXISTS ${DB}"
q "CREATE DATABASE ${DB}"
# The table `strata init` creates for page_views_per_minute's speed view (single node).
q "CREATE TABLE ${DB}.speed (window_start_ms Int64, window_end_ms Int64, page String, country String, kafka_partition Int32, agg_events UInt64, agg_duration_ms_count UInt64, agg_duration_ms_sum Float64, agg_duration_ms_min Float64, agg_duration_ms_max Float64, first_offset Int64, last_offset Int64, version UInt64, retracted UInt8, is_final UInt8, updated_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree(version) PARTITION BY toYYYYMM(toDateTime(intDiv(window_start_ms, 1000))) ORDER BY (window_start_ms, page, country, kafka_partition)"
# Rows in window order, as the speed layer emits them: 12,500 pages x 8 countries, 32 partitions.
q "SELECT 1793491200000 + intDiv(number, 100000) * 60000 AS ws, ws + 60000, concat('/page/', toString(number % 12500)), concat('C', toString(intDiv(number % 100000, 12500))), toInt32(number % 32), toUInt64(1 + number % 50), toUInt64(1 + number % 50), toFloat64(number % 90000), 1.0, 90000.0, toInt64(number), toInt64(number + 10), toUInt64(number), toUInt8(0), toUInt8(0) FROM numbers(${ROWS}) FORMAT RowBinary" >"${DATA}"
echo "rows: ${ROWS}, $(( $(stat -c %s "${DATA}") / ROWS )) bytes each as RowBinary"

for block in 100000 1000000; do
    q "TRUNCATE TABLE ${DB}.speed"
    python3 - "${DATA}" "${block}" "${ROWS}" "${CH}" "INSERT INTO ${DB}.speed (${COLUMNS}) FORMAT RowBinary" <<'PY'
import sys, time, urllib.parse, urllib.request
path, block, rows, url, query = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
data = open(path, "rb").read()

def skip_string(p):
    length, shift = 0, 0
    while True:
        b = data[p]; p += 1
        length |= (b & 0x7F) << shift; shift += 7
        if b < 0x80:
            return p + length

# Row boundaries: two Int64, two strings, an Int32, eight 8-byte numbers, two UInt8.
bounds, p = [0], 0
while p < len(data):
    p = skip_string(skip_string(p + 16)) + 4 + 8 * 8 + 2
    bounds.append(p)
target = url + "?query=" + urllib.parse.quote(query)
start = time.monotonic()
for i in range(0, rows, block):
    body = data[bounds[i]:bounds[min(i + block, rows)]]
    urllib.request.urlopen(urllib.request.Request(target, data=body, method="POST")).read()
seconds = time.monotonic() - start
print(f"block={block} rows={rows} seconds={seconds:.1f} rows_per_s={rows / seconds:,.0f}")
PY
done
q "OPTIMIZE TABLE ${DB}.speed FINAL"
echo "on disk after OPTIMIZE FINAL: $(q "SELECT round(sum(bytes_on_disk) / sum(rows), 1) FROM system.parts WHERE database = '${DB}' AND active") bytes per row"
q "DROP DATABASE ${DB}"
