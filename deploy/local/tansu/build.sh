#!/usr/bin/env bash
#
# deploy/local/tansu/build.sh - build the Tansu 0.6.0 test broker with Strata's one patch.
#
# Why a patch: Tansu 0.6.0 (the newest release) panics in its SQLite storage task when an
# idempotent producer bumps its epoch by itself, which librdkafka does after a message
# timeout or a sequence gap (rdkafka_idempotence.c: "The idempotent producer can bump its
# own epoch"). The produce request names an epoch the broker has not stored, the query for
# it returns no row, `query_one` panics ("more or less than one row"), and from then on
# every request to that broker fails. Our test suite hits this whenever the broker is slow
# enough for a producer's messages to time out. The patch (tansu-storage-0.6.0-
# idempotent-epoch.patch, next to this script) accepts the new epoch at sequence 0 as Kafka
# does, and turns any other missing row into an error for that one request.
#
# What it does: fetches the published tansu and tansu-storage 0.6.0 crates (from cargo's
# download cache when present, otherwise from static.crates.io), checks their SHA-256,
# applies the patch, and builds the `tansu` binary with the libsql (SQLite) feature against
# the crate's own Cargo.lock. Takes about as long as `cargo install tansu` (13 minutes on
# 2 cores).
#
# Usage: deploy/local/tansu/build.sh DEST_BIN     (e.g. ~/.cargo/strata/tansu-0.6.0-strata.1/bin/tansu)

set -euo pipefail

readonly TANSU_VERSION=0.6.0
# SHA-256 of the published .crate files (the checksums in crates.io's index).
readonly TANSU_SHA256=4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d
readonly TANSU_STORAGE_SHA256=720d2ed8e6010c70f7f06e5af5a7274ebbf6e42fdcd9e46de542b10dc4d2f35d

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PATCH="${SCRIPT_DIR}/tansu-storage-${TANSU_VERSION}-idempotent-epoch.patch"

dest="${1:?usage: build.sh DEST_BIN}"
cargo="$(command -v cargo 2>/dev/null || true)"
[[ -z "${cargo}" && -x "${HOME}/.cargo/bin/cargo" ]] && cargo="${HOME}/.cargo/bin/cargo"
[[ -n "${cargo}" ]] || { echo "cargo is not installed (install Rust from https://rustup.rs)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

# fetch_crate NAME SHA256 : unpack NAME-TANSU_VERSION into $work after checking its digest.
fetch_crate() {
    local name="$1" sha="$2" file="${work}/${1}-${TANSU_VERSION}.crate" cached
    cached="$(ls "${CARGO_HOME:-${HOME}/.cargo}"/registry/cache/*/"${name}-${TANSU_VERSION}.crate" 2>/dev/null | head -n 1 || true)"
    if [[ -n "${cached}" ]]; then
        cp "${cached}" "${file}"
    else
        curl -fsSL --retry 3 -o "${file}" "https://static.crates.io/crates/${name}/${TANSU_VERSION}/download"
    fi
    echo "${sha}  ${file}" | sha256sum -c --quiet - ||
        { echo "${name}-${TANSU_VERSION}.crate: SHA-256 mismatch" >&2; exit 1; }
    tar xzf "${file}" -C "${work}"
}

fetch_crate tansu "${TANSU_SHA256}"
fetch_crate tansu-storage "${TANSU_STORAGE_SHA256}"

# git, not patch: a clone has git; a fresh Debian may lack patch.
git -C "${work}" apply -p1 "${PATCH}"

# The binary crate builds against the patched storage crate; everything else stays at the
# versions in the published Cargo.lock (cargo only rewrites the patched entry).
cat >>"${work}/tansu-${TANSU_VERSION}/Cargo.toml" <<EOF

[patch.crates-io]
tansu-storage = { path = "../tansu-storage-${TANSU_VERSION}" }
EOF

# No rust-toolchain file here: the default toolchain builds it, as `cargo install` would.
(cd "${work}/tansu-${TANSU_VERSION}" &&
    "${cargo}" build --release --features libsql --bin tansu --target-dir "${work}/target" </dev/null)

install -D -m 0755 "${work}/target/release/tansu" "${dest}"
echo "built ${dest} (tansu ${TANSU_VERSION} + strata patch)"
