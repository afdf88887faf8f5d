#!/usr/bin/env bash
#
# scripts/test.sh - the whole Strata test suite, from a fresh Debian machine.
#
# 1. installs (when missing) and starts the local stack on loopback:
#    ClickHouse 18.16, the Tansu Kafka-compatible broker, the moto S3 server
#    (deploy/local/up.sh; data and PIDs under .strata/), and the local
#    ClickHouse cluster for tests/cluster.rs: ZooKeeper and three
#    ClickHouse 18.16 nodes (deploy/local/up.sh cluster), and a Kafka
#    listener behind TLS (deploy/local/up.sh tls: stunnel and a second
#    Tansu); then the build's system packages (scripts/build-deps.sh:
#    pkg-config, OpenSSL's headers) and chDB for the compatibility test
#    with a current ClickHouse (scripts/install-chdb.sh, a pinned venv);
# 2. checks formatting and lints (cargo fmt, cargo clippy -D warnings);
# 3. builds and runs every test of every crate against those real servers
#    (cargo nextest when installed, else cargo test).
#
# The stack is left running for the next run (up.sh is idempotent; the
# Kafka broker is emptied at the start of each run); stop it with
# deploy/local/down.sh (and deploy/local/down.sh cluster). Extra arguments go to the test runner, e.g.
#   scripts/test.sh -E 'test(init)'      (nextest filter)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export STRATA_HOME="${STRATA_HOME:-$PWD/.strata}"

log() { printf '[strata-test] %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  log "cargo is not installed: install Rust with rustup (https://rustup.rs) and rerun" >&2
  exit 1
fi

# A cold build of the workspace and its tests, plus a first Tansu install,
# takes about 15 GiB; a full disk shows up only as a linker's "No space
# left on device" halfway through, so say it up front.
# (Measured on the nearest existing folder: a custom target folder may not
# exist yet. A size that cannot be read is not a reason to stop.)
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
probe="$target_dir"
while [ ! -d "$probe" ]; do probe=$(dirname "$probe"); done
free_kib=$(df -Pk "$probe" 2>/dev/null | awk 'NR == 2 { print $4 }') || free_kib=
case "$free_kib" in
  '' | *[!0-9]*) ;;
  *)
    if [ "$free_kib" -lt $((15 * 1024 * 1024)) ]; then
      log "warning: only $((free_kib / 1024 / 1024)) GiB free for $target_dir; a cold build needs about 15 GiB (free some with 'cargo clean', or point CARGO_TARGET_DIR elsewhere)" >&2
    fi
    ;;
esac

started=$(date +%s)
# Tansu slows down as its SQLite file grows: one full run leaves about
# 250 MB, enough to stall the next run's kill -9 and rebalance tests. The
# broker holds only the tests' own topics, so every run starts it empty.
log "emptying the test broker (deploy/local/down.sh kafka --purge)"
deploy/local/down.sh kafka --purge
log "starting the local stack (deploy/local/up.sh)"
deploy/local/up.sh
# shellcheck disable=SC1091
. "$STRATA_HOME/stack.env"
# 18.16's query log (read by tests/chdb_compat.rs) has no TTL: start empty.
curl -sf "$STRATA_CLICKHOUSE_URL" --data-binary "TRUNCATE TABLE IF EXISTS system.query_log" >/dev/null ||
  log "warning: could not empty system.query_log"
log "starting the local ClickHouse cluster (deploy/local/up.sh cluster)"
deploy/local/up.sh cluster
# The TLS Kafka listener of tests/kafka_tls.rs (stunnel in front of a
# second Tansu), emptied like the first broker.
log "starting the TLS Kafka listener (deploy/local/up.sh tls)"
deploy/local/down.sh tls --purge
deploy/local/up.sh tls
log "system build dependencies (scripts/build-deps.sh)"
scripts/build-deps.sh
log "chDB, a current ClickHouse in process, for tests/chdb_compat.rs (scripts/install-chdb.sh)"
scripts/install-chdb.sh

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run"
  summary=$(mktemp)
  cargo nextest run --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$summary"
  # nextest does not run doctests.
  cargo test --workspace --doc --locked
  # The suite's count last (the doctests' "0 passed" would read as no test).
  counts=$(sed -n 's/.*Summary \[.*\] \([0-9]*\) tests\{0,1\} run: \([0-9]*\) passed.*/\2/p' "$summary" | tail -n 1)
  rm -f "$summary"
  log "all tests passed in $(( $(date +%s) - started ))s"
  if [ -n "$counts" ]; then
    printf 'tests: %s passed, 0 failed\n' "$counts"
  fi
else
  log "cargo test (install cargo-nextest for faster, isolated runs)"
  cargo test --workspace --locked --no-fail-fast "$@"
  log "all tests passed in $(( $(date +%s) - started ))s"
fi
