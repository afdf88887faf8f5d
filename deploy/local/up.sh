#!/usr/bin/env bash
#
# deploy/local/up.sh - install (when missing) and start the local Strata test stack.
#
# Starts, on loopback (127.0.0.1) only, the three servers the project's tests need:
#
#   clickhouse  Debian's clickhouse-server 18.16, own config under $STRATA_HOME/clickhouse/
#               (not the system service), HTTP on 18123 and HTTPS on 18443 (a certificate for
#               127.0.0.1 signed by a test CA made once in $STRATA_HOME/tls/ with openssl;
#               STRATA_CLICKHOUSE_HTTPS_URL, STRATA_TLS_CA). Installed with apt-get when missing. Users:
#               default, strata_reader (read-only: the serving API's) and
#               strata_grafana (read-only: the Grafana data source's).
#   kafka       Tansu, a Kafka-compatible broker with SQLite storage in $STRATA_HOME/tansu/.
#               Built when missing by deploy/local/tansu/build.sh: the published 0.6.0 with
#               one patch (an idempotent producer's epoch bump crashed its storage task).
#   s3          moto's S3 server (in-memory). Installed with pip (into a venv under
#               $STRATA_HOME/tools/ when moto_server is not already on PATH).
#
# and, only when named, a local ClickHouse cluster next to (not instead of) the above:
#
#   cluster     ZooKeeper (Debian's zookeeper package, one standalone server) and three
#               clickhouse-server 18.16 nodes, each with its own ports, config and data under
#               $STRATA_HOME/cluster/. Every node defines two clusters in <remote_servers>:
#                 strata_2shards     node1 (shard 01) and node2 (shard 02), one replica each
#                 strata_replicated  one shard (01) of two replicas: node1 and node3
#                                    (internal_replication: the replicated tables copy)
#               Macros: node1 shard=01 replica=node1, node2 shard=02 replica=node2,
#               node3 shard=01 replica=node3 (a node-unique replica name, so tables
#               replicated to every node share one ZooKeeper path). Distributed DDL
#               (ON CLUSTER) queue: /clickhouse/task_queue/ddl.
#   tls         a Kafka listener behind TLS for the tests of Strata's TLS client: a test CA
#               and a server certificate for 127.0.0.1 (openssl, made once, in
#               $STRATA_HOME/tls/), a second Tansu on 127.0.0.1:19094 and stunnel (Debian's
#               stunnel4, installed with apt-get when missing) terminating TLS on
#               127.0.0.1:19093 in front of it. Tansu 0.6.0 takes a --cert flag but never
#               wraps its listener in TLS, hence stunnel; the second Tansu advertises
#               stunnel's port, so every connection after the bootstrap is TLS too. The
#               broker requires SASL/SCRAM (--authentication): user strata, password
#               strata-test-secret, SCRAM-SHA-256 and -512.
#               Endpoints in $STRATA_HOME/tls.env (STRATA_TLS_KAFKA_BROKERS, STRATA_TLS_CA).
#
# Usage:
#   deploy/local/up.sh                     # start all three (not the cluster)
#   deploy/local/up.sh clickhouse kafka    # start only the named components
#   deploy/local/up.sh cluster             # start the local ClickHouse cluster
#   deploy/local/up.sh tls                 # start the TLS Kafka listener
#   deploy/local/up.sh --help
#
# Then, in your shell or CI job:
#   source "$STRATA_HOME/stack.env"        # exports STRATA_CLICKHOUSE_URL, STRATA_KAFKA_BROKERS,
#                                          # STRATA_S3_ENDPOINT, AWS_* (moto credentials)
#   source "$STRATA_HOME/cluster.env"      # after `up.sh cluster`: STRATA_CLUSTER_NODE<n>_URL
#                                          # (HTTP URL of node n), STRATA_CLUSTER_ZOOKEEPER
#
# Stop with deploy/local/down.sh (same component arguments; --purge also deletes data).
#
# Environment (all optional):
#   STRATA_HOME                         state dir (default: <repo root>/.strata)
#   STRATA_CLICKHOUSE_HTTP_PORT         default 18123
#   STRATA_CLICKHOUSE_HTTPS_PORT        default 18443
#   STRATA_TLS_KAFKA_PORT               default 19093 (stunnel, TLS; up.sh tls)
#   STRATA_TLS_KAFKA_BROKER_PORT        default 19094 (the Tansu behind it, plaintext, loopback)
#   STRATA_CLICKHOUSE_TCP_PORT          default 19000
#   STRATA_CLICKHOUSE_INTERSERVER_PORT  default 19009
#   STRATA_CLICKHOUSE_TIMEZONE          server time zone (default UTC)
#   STRATA_KAFKA_PORT                   default 19092
#   STRATA_KAFKA_LOG                    tansu RUST_LOG filter (default: warn)
#   STRATA_S3_PORT                      default 15000
#   STRATA_CLUSTER_ZOOKEEPER_PORT       default 12181
#   STRATA_CLUSTER_HTTP_PORT_BASE       default 18130 (node n listens on base + n)
#   STRATA_CLUSTER_TCP_PORT_BASE        default 19100 (node n: base + n)
#   STRATA_CLUSTER_INTERSERVER_PORT_BASE default 19110 (node n: base + n)
#
# Layout under $STRATA_HOME:
#   pids/<component>.pid   PID of the server process (session leader started with setsid)
#   logs/<component>.log   stdout/stderr of the server process
#   clickhouse/            config.xml, users.xml, data/, tmp/, user_files/, format_schemas/, logs/
#   tansu/                 working dir of tansu; SQLite database tansu.db
#   s3/                    working dir of moto_server (moto keeps everything in memory)
#   tools/                 venv for moto when it had to be installed
#   stack.env              export lines for the endpoints
#   cluster/zookeeper/     zoo.cfg, log4j.properties, data/ (pid file pids/cluster-zookeeper.pid)
#   cluster/clickhouse-<n>/ like clickhouse/, plus config.d/cluster.xml (pids/cluster-clickhouse-<n>.pid)
#   cluster.env            export lines for the cluster's endpoints
#   tls/                   the test CA and server certificate (also ClickHouse's HTTPS port),
#                          stunnel.conf, tansu/ (the TLS broker's working dir and SCRAM users)
#   tls.env                export lines for the TLS listener and its SCRAM credentials
#
# The script is idempotent: a component whose PID file names a live, healthy process is
# left alone ("already running"); a stale PID file is removed and the component restarted.
# It is safe to run non-interactively (CI): it never reads stdin.

set -euo pipefail

readonly LOG_PREFIX="[strata-stack]"
readonly ALL_COMPONENTS=(clickhouse kafka s3)

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
STRATA_HOME="${STRATA_HOME:-${REPO_ROOT}/.strata}"
# Relative STRATA_HOME values are taken relative to the caller's cwd (servers run elsewhere).
[[ "${STRATA_HOME}" == /* ]] || STRATA_HOME="${PWD}/${STRATA_HOME}"

CH_HTTP_PORT="${STRATA_CLICKHOUSE_HTTP_PORT:-18123}"
CH_HTTPS_PORT="${STRATA_CLICKHOUSE_HTTPS_PORT:-18443}"
CH_TCP_PORT="${STRATA_CLICKHOUSE_TCP_PORT:-19000}"
CH_INTERSERVER_PORT="${STRATA_CLICKHOUSE_INTERSERVER_PORT:-19009}"
CH_TIMEZONE="${STRATA_CLICKHOUSE_TIMEZONE:-UTC}"
KAFKA_PORT="${STRATA_KAFKA_PORT:-19092}"
KAFKA_LOG="${STRATA_KAFKA_LOG:-warn}"
S3_PORT="${STRATA_S3_PORT:-15000}"
TLS_KAFKA_PORT="${STRATA_TLS_KAFKA_PORT:-19093}"
TLS_KAFKA_BROKER_PORT="${STRATA_TLS_KAFKA_BROKER_PORT:-19094}"
ZK_PORT="${STRATA_CLUSTER_ZOOKEEPER_PORT:-12181}"
CLUSTER_HTTP_BASE="${STRATA_CLUSTER_HTTP_PORT_BASE:-18130}"
CLUSTER_TCP_BASE="${STRATA_CLUSTER_TCP_PORT_BASE:-19100}"
CLUSTER_INTERSERVER_BASE="${STRATA_CLUSTER_INTERSERVER_PORT_BASE:-19110}"

readonly CH_TIMEOUT=60 KAFKA_TIMEOUT=60 S3_TIMEOUT=30

PID_DIR="${STRATA_HOME}/pids"
LOG_DIR="${STRATA_HOME}/logs"

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

info() { printf '%s %s\n' "${LOG_PREFIX}" "$*"; }
warn() { printf '%s WARNING: %s\n' "${LOG_PREFIX}" "$*" >&2; }
die() {
    printf '%s ERROR: %s\n' "${LOG_PREFIX}" "$*" >&2
    exit 1
}

usage() {
    # Print the header comment (from line 3 up to the first non-comment line).
    awk 'NR < 3 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
}

# Run a command as root (directly when we are root, otherwise through sudo -n).
as_root() {
    if [[ "${EUID}" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root privileges (or passwordless sudo) to run: $*"
    fi
}

# apt_install PKG... : install Debian/Ubuntu packages, running apt-get update only when the
# first attempt fails (e.g. empty or stale package lists).
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        die "apt-get not found: automatic installation of '$*' is only supported on Debian/Ubuntu. Install it manually and re-run."
    fi
    info "installing with apt-get: $*"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null; then
        info "apt-get install failed; running apt-get update and retrying"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null ||
            die "apt-get install $* failed"
    fi
}

validate_port() {
    local name="$1" value="$2"
    if ! [[ "${value}" =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
        die "${name} must be a TCP port number, got '${value}'"
    fi
}

# tcp_open PORT : true when something accepts TCP connections on 127.0.0.1:PORT.
tcp_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# is_alive PID : true when PID is a running (non-zombie) process.
is_alive() {
    local pid="$1" state
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null || true)"
    [[ "${state}" != "Z" ]]
}

# owned_by PID PATTERN : true when the command line of PID contains PATTERN (protects
# against PID reuse after a reboot or crash).
owned_by() {
    local pid="$1" pattern="$2" cmdline
    cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true)"
    [[ "${cmdline}" == *"${pattern}"* ]]
}

pid_file() { printf '%s/%s.pid' "${PID_DIR}" "$1"; }
log_file() { printf '%s/%s.log' "${LOG_DIR}" "$1"; }

# read_pid COMPONENT : print the PID recorded for COMPONENT (empty when none).
read_pid() {
    local f
    f="$(pid_file "$1")"
    if [[ -f "${f}" ]]; then
        tr -dc '0-9' <"${f}"
    fi
}

# running_pid COMPONENT PATTERN : print the PID when the PID file names a live process of
# ours; remove a stale PID file otherwise.
running_pid() {
    local component="$1" pattern="$2" pid
    pid="$(read_pid "${component}")"
    if [[ -n "${pid}" ]] && is_alive "${pid}" && owned_by "${pid}" "${pattern}"; then
        printf '%s' "${pid}"
        return 0
    fi
    if [[ -f "$(pid_file "${component}")" ]]; then
        # (stderr: this function runs inside a command substitution)
        info "${component}: removing stale PID file (pid '${pid}' is not running or not ours)" >&2
        rm -f "$(pid_file "${component}")"
    fi
    return 1
}

# launch COMPONENT WORKDIR CMD... : start CMD detached (new session, no stdin, output to the
# component log). The process records its own PID before exec'ing CMD, so the PID file
# names the server itself even if setsid has to fork.
launch() {
    local component="$1" workdir="$2"
    shift 2
    local pidf logf
    pidf="$(pid_file "${component}")"
    logf="$(log_file "${component}")"
    rm -f "${pidf}"
    printf '\n===== %s starting %s: %s =====\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "${component}" "$*" >>"${logf}"
    (
        cd "${workdir}"
        # shellcheck disable=SC2016 # $$ and $@ are expanded by the inner shell
        exec setsid bash -c 'echo $$ >"$0"; exec nohup "$@"' "${pidf}" "$@" </dev/null >>"${logf}" 2>&1
    ) &
    # Not a job of ours any more: no "Aborted"/"Killed" job notices from bash.
    disown "$!" 2>/dev/null || true
    # Wait (briefly) for the PID file to appear.
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "${pidf}" ]] && return 0
        sleep 0.1
    done
    die "${component}: process did not start (no PID file); see $(log_file "${component}")"
}

show_log_tail() {
    local component="$1" f
    shift
    for f in "$(log_file "${component}")" "$@"; do
        [[ -f "${f}" ]] || continue
        printf '%s ---- last 30 lines of %s ----\n' "${LOG_PREFIX}" "${f}" >&2
        tail -n 30 "${f}" >&2 || true
    done
}

# wait_healthy COMPONENT TIMEOUT CHECK_FN [EXTRA_LOG...]
wait_healthy() {
    local component="$1" timeout="$2" check="$3"
    shift 3
    local pid deadline=$((SECONDS + timeout))
    pid="$(read_pid "${component}")"
    info "${component}: waiting up to ${timeout}s for it to become healthy (pid ${pid})"
    while ((SECONDS < deadline)); do
        if ! is_alive "${pid}"; then
            show_log_tail "${component}" "$@"
            rm -f "$(pid_file "${component}")"
            die "${component}: process ${pid} exited during start-up"
        fi
        if "${check}"; then
            info "${component}: healthy"
            return 0
        fi
        sleep 0.5
    done
    show_log_tail "${component}" "$@"
    die "${component}: not healthy after ${timeout}s (process ${pid} left running; stop it with down.sh)"
}

# ensure_port_free COMPONENT PORT...
ensure_port_free() {
    local component="$1" port
    shift
    for port in "$@"; do
        if tcp_open "${port}"; then
            die "${component}: port 127.0.0.1:${port} is already in use by another process (not started by this script). Free it or choose another port via the STRATA_* port variables."
        fi
    done
}

need_curl() {
    command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
}

# ---------------------------------------------------------------------------------------
# clickhouse
# ---------------------------------------------------------------------------------------

CH_DIR="${STRATA_HOME}/clickhouse"

clickhouse_bin() {
    local b
    for b in "$(command -v clickhouse-server 2>/dev/null || true)" /usr/sbin/clickhouse-server /usr/bin/clickhouse-server; do
        if [[ -n "${b}" && -x "${b}" ]]; then
            printf '%s' "${b}"
            return 0
        fi
    done
    return 1
}

clickhouse_install() {
    clickhouse_bin >/dev/null && return 0
    info "clickhouse: clickhouse-server not found, installing"
    apt_install clickhouse-server clickhouse-client
    clickhouse_bin >/dev/null || die "clickhouse: clickhouse-server still not found after installation"
}

clickhouse_write_config() {
    mkdir -p "${CH_DIR}"/{data,tmp,user_files,format_schemas,logs}
    cat >"${CH_DIR}/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/local/up.sh; overwritten on every start. Format: ClickHouse 18.16. -->
<yandex>
    <logger>
        <level>information</level>
        <log>${CH_DIR}/logs/clickhouse-server.log</log>
        <errorlog>${CH_DIR}/logs/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>

    <listen_host>127.0.0.1</listen_host>
    <http_port>${CH_HTTP_PORT}</http_port>
    <tcp_port>${CH_TCP_PORT}</tcp_port>
    <interserver_http_port>${CH_INTERSERVER_PORT}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>

    <!-- HTTPS for the tests of Strata's https:// client, with the test CA's
         certificate of \$STRATA_HOME/tls/ (made by up.sh). -->
    <!-- What users with log_queries (users.xml) sent: tests/chdb_compat.rs
         replays it on a current ClickHouse. -->
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <flush_interval_milliseconds>7500</flush_interval_milliseconds>
    </query_log>

${CH_HTTPS_PORT:+    <https_port>${CH_HTTPS_PORT}</https_port>}
    <openSSL>
        <server>
            <certificateFile>${TLS_DIR}/server.pem</certificateFile>
            <privateKeyFile>${TLS_DIR}/server-key.pem</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>

    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>

    <path>${CH_DIR}/data/</path>
    <tmp_path>${CH_DIR}/tmp/</tmp_path>
    <user_files_path>${CH_DIR}/user_files/</user_files_path>
    <format_schema_path>${CH_DIR}/format_schemas/</format_schema_path>

    <users_config>${CH_DIR}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>${CH_TIMEZONE}</timezone>
    <mlock_executable>false</mlock_executable>

    <!-- no include_from / zookeeper / remote_servers here: the single node has none,
         a node of up.sh cluster gets them from config.d/cluster.xml -->
    <max_table_size_to_drop>0</max_table_size_to_drop>
    <max_partition_size_to_drop>0</max_partition_size_to_drop>
</yandex>
EOF
    cat >"${CH_DIR}/users.xml" <<'EOF'
<?xml version="1.0"?>
<!-- Generated by deploy/local/up.sh; overwritten on every start. -->
<yandex>
    <profiles>
        <!-- log_queries: tests/chdb_compat.rs replays on a current ClickHouse
             (chDB) the SQL that Strata sent to this server. 18.16's query_log
             has no TTL: scripts/test.sh truncates it at each run. -->
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <log_queries>1</log_queries>
        </default>
        <!-- The serving API's profile: readonly = 2 allows reads and
             per-query settings (the API sets max_execution_time,
             max_memory_usage, query_id), refuses every write and DDL. -->
        <strata_reader>
            <readonly>2</readonly>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <log_queries>1</log_queries>
        </strata_reader>
        <!-- The Grafana data source's profile (deploy/clickhouse/strata-grafana.xml,
             without its settings constraints, which 18.16 predates):
             readonly = 2 because Grafana's plugin sets max_execution_time. -->
        <strata_grafana>
            <readonly>2</readonly>
            <max_execution_time>60</max_execution_time>
            <max_memory_usage>2000000000</max_memory_usage>
            <max_result_rows>1000000</max_result_rows>
            <result_overflow_mode>break</result_overflow_mode>
        </strata_grafana>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks replace="replace">
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <!-- [serving] clickhouse_user of strata.toml: the API reads with it.
             ClickHouse 18.16 has no CREATE USER: users are defined here. -->
        <strata_reader>
            <password></password>
            <networks replace="replace">
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>strata_reader</profile>
            <quota>default</quota>
        </strata_reader>
        <!-- The provisioned Grafana data source reads with it. -->
        <strata_grafana>
            <password></password>
            <networks replace="replace">
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>strata_grafana</profile>
            <quota>default</quota>
        </strata_grafana>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

clickhouse_healthy() {
    [[ "$(curl -sf --max-time 2 "http://127.0.0.1:${CH_HTTP_PORT}/ping" 2>/dev/null)" == Ok* ]]
}

start_clickhouse() {
    need_curl
    local pid
    if pid="$(running_pid clickhouse clickhouse)"; then
        # A server an older up.sh started may run an older config: users.xml
        # is re-read by the server on its own, config.xml (ports, query_log)
        # only at start, so a changed config.xml restarts it.
        local before
        before="$(cat "${CH_DIR}/config.xml" 2>/dev/null || true)"
        tls_material
        clickhouse_write_config
        if [[ "$(cat "${CH_DIR}/config.xml")" == "${before}" ]]; then
            if clickhouse_healthy; then
                info "clickhouse: already running (pid ${pid})"
                return 0
            fi
            wait_healthy clickhouse "${CH_TIMEOUT}" clickhouse_healthy "${CH_DIR}/logs/clickhouse-server.err.log"
            return 0
        fi
        info "clickhouse: its config.xml changed since it started (pid ${pid}): restarting it"
        signal_stop clickhouse
    fi
    clickhouse_install
    # (ClickHouse binds with SO_REUSEPORT: a port taken by another server
    # would be shared with it, not refused.)
    ensure_port_free clickhouse "${CH_HTTP_PORT}" "${CH_HTTPS_PORT}" "${CH_TCP_PORT}" "${CH_INTERSERVER_PORT}"
    tls_material
    clickhouse_write_config
    local bin
    bin="$(clickhouse_bin)"
    info "clickhouse: starting ${bin} (http ${CH_HTTP_PORT}, https ${CH_HTTPS_PORT}, tcp ${CH_TCP_PORT})"
    launch clickhouse "${CH_DIR}" "${bin}" "--config-file=${CH_DIR}/config.xml"
    wait_healthy clickhouse "${CH_TIMEOUT}" clickhouse_healthy "${CH_DIR}/logs/clickhouse-server.err.log"
}

# ---------------------------------------------------------------------------------------
# kafka (tansu)
# ---------------------------------------------------------------------------------------

TANSU_DIR="${STRATA_HOME}/tansu"

# The broker is Tansu 0.6.0 with one patch (deploy/local/tansu/build.sh says why), kept
# outside STRATA_HOME so `down.sh --purge` does not throw away a 9-minute build. An
# unpatched `tansu` on PATH is not used: its storage task dies on an idempotent producer's
# epoch bump. STRATA_TANSU_BIN names another build to use instead.
TANSU_BIN="${STRATA_TANSU_BIN:-${CARGO_HOME:-${HOME}/.cargo}/strata/tansu-0.6.0-strata.1/bin/tansu}"

tansu_bin() {
    [[ -x "${TANSU_BIN}" ]] || return 1
    printf '%s' "${TANSU_BIN}"
}

tansu_install() {
    tansu_bin >/dev/null && return 0
    info "kafka: ${TANSU_BIN} not found; building the patched Tansu 0.6.0 (deploy/local/tansu/build.sh, takes several minutes)"
    info "kafka: build output goes to $(log_file kafka-install)"
    if ! "${SCRIPT_DIR}/tansu/build.sh" "${TANSU_BIN}" </dev/null >"$(log_file kafka-install)" 2>&1; then
        tail -n 30 "$(log_file kafka-install)" >&2 || true
        die "kafka: building tansu failed (see $(log_file kafka-install))"
    fi
    tansu_bin >/dev/null || die "kafka: ${TANSU_BIN} still missing after the build"
}

# kafka_answers PORT [CA_FILE] : send a Kafka ApiVersions (v0) request (over TLS,
# verifying the server against CA_FILE, when given) and check for a well-formed response
# with error_code 0. Falls back to a plain TCP connect when python3 is unavailable.
kafka_answers() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$1" "${2:-}" <<'PY' 2>/dev/null
import socket, ssl, struct, sys
port, ca = int(sys.argv[1]), sys.argv[2]
client = b"strata-up"
# request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id
body = struct.pack(">hhih", 18, 0, 4242, len(client)) + client
with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
    s = ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname="127.0.0.1") if ca else raw
    s.settimeout(2)
    s.sendall(struct.pack(">i", len(body)) + body)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf
    (size,) = struct.unpack(">i", read(4))
    resp = read(size)
    corr, err = struct.unpack(">ih", resp[:6])
    sys.exit(0 if corr == 4242 and err == 0 else 1)
PY
    else
        # No python3: accept a TCP connect plus a short grace period.
        tcp_open "$1" && sleep 1
    fi
}

kafka_healthy() { kafka_answers "${KAFKA_PORT}"; }

start_kafka() {
    local pid
    if pid="$(running_pid kafka tansu)"; then
        if kafka_healthy; then
            info "kafka: already running (pid ${pid})"
            return 0
        fi
        wait_healthy kafka "${KAFKA_TIMEOUT}" kafka_healthy
        return 0
    fi
    tansu_install
    ensure_port_free kafka "${KAFKA_PORT}"
    mkdir -p "${TANSU_DIR}"
    local bin
    bin="$(tansu_bin)"
    info "kafka: starting ${bin} broker on 127.0.0.1:${KAFKA_PORT} (sqlite storage in ${TANSU_DIR})"
    # tansu resolves sqlite://tansu.db relative to its working directory.
    # Explicit flags override tansu's env fallbacks (CLUSTER_ID, LISTENER_URL, ...); the
    # optional ones are unset so a stray SCHEMA_REGISTRY / OTLP endpoint cannot leak in.
    # tansu has no metrics listener of its own (OTLP push only), so only one port is used.
    launch kafka "${TANSU_DIR}" env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
        "RUST_LOG=${KAFKA_LOG}" "${bin}" broker \
        --cluster-id strata-local \
        --listener-url "tcp://127.0.0.1:${KAFKA_PORT}" \
        --advertised-listener-url "tcp://127.0.0.1:${KAFKA_PORT}" \
        --storage-engine "sqlite://tansu.db"
    wait_healthy kafka "${KAFKA_TIMEOUT}" kafka_healthy
}

# ---------------------------------------------------------------------------------------
# s3 (moto)
# ---------------------------------------------------------------------------------------

S3_DIR="${STRATA_HOME}/s3"
MOTO_VENV="${STRATA_HOME}/tools/moto-venv"

moto_bin() {
    local b
    for b in "$(command -v moto_server 2>/dev/null || true)" "${MOTO_VENV}/bin/moto_server"; do
        if [[ -n "${b}" && -x "${b}" ]]; then
            printf '%s' "${b}"
            return 0
        fi
    done
    return 1
}

moto_install() {
    moto_bin >/dev/null && return 0
    info "s3: moto_server not found; installing 'moto[server]' into ${MOTO_VENV}"
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    if ! python3 -m venv "${MOTO_VENV}" >/dev/null 2>&1; then
        rm -rf "${MOTO_VENV}"
        # Debian/Ubuntu split venv/ensurepip into a separate package.
        apt_install python3-venv
        python3 -m venv "${MOTO_VENV}" || die "s3: cannot create a python venv at ${MOTO_VENV}"
    fi
    "${MOTO_VENV}/bin/python" -m pip install -q 'moto[server]' </dev/null ||
        die "s3: pip install 'moto[server]' failed"
    moto_bin >/dev/null || die "s3: moto_server still not found after installation"
}

s3_healthy() {
    local code
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:${S3_PORT}/" 2>/dev/null || true)"
    [[ -n "${code}" && "${code}" != "000" ]]
}

start_s3() {
    need_curl
    local pid
    if pid="$(running_pid s3 moto)"; then
        if s3_healthy; then
            info "s3: already running (pid ${pid})"
            return 0
        fi
        wait_healthy s3 "${S3_TIMEOUT}" s3_healthy
        return 0
    fi
    moto_install
    ensure_port_free s3 "${S3_PORT}"
    mkdir -p "${S3_DIR}"
    local bin
    bin="$(moto_bin)"
    info "s3: starting ${bin} on 127.0.0.1:${S3_PORT}"
    launch s3 "${S3_DIR}" "${bin}" -H 127.0.0.1 -p "${S3_PORT}"
    wait_healthy s3 "${S3_TIMEOUT}" s3_healthy
}

# ---------------------------------------------------------------------------------------
# cluster (ZooKeeper + three ClickHouse nodes; started only when named)
# ---------------------------------------------------------------------------------------

CLUSTER_DIR="${STRATA_HOME}/cluster"
ZK_DIR="${CLUSTER_DIR}/zookeeper"
ZK_JAR=/usr/share/java/zookeeper.jar
readonly CLUSTER_NODES=(1 2 3)
readonly ZK_TIMEOUT=60

# cluster_node_shard N : the {shard} macro of node N (node1 and node3 are the two replicas
# of shard 01 in strata_replicated; node1 and node2 are the shards of strata_2shards).
cluster_node_shard() {
    case "$1" in
        2) echo 02 ;;
        *) echo 01 ;;
    esac
}
cluster_http_port() { echo $((CLUSTER_HTTP_BASE + $1)); }
cluster_tcp_port() { echo $((CLUSTER_TCP_BASE + $1)); }
cluster_interserver_port() { echo $((CLUSTER_INTERSERVER_BASE + $1)); }

zookeeper_install() {
    [[ -f "${ZK_JAR}" ]] && command -v java >/dev/null 2>&1 && return 0
    info "cluster: ZooKeeper (${ZK_JAR}) or java not found, installing"
    apt_install zookeeper
    [[ -f "${ZK_JAR}" ]] || die "cluster: ${ZK_JAR} still not found after installing zookeeper"
    command -v java >/dev/null 2>&1 || die "cluster: java not found (zookeeper needs a JRE: apt-get install default-jre-headless)"
}

zookeeper_write_config() {
    mkdir -p "${ZK_DIR}/data"
    cat >"${ZK_DIR}/zoo.cfg" <<EOF
# Generated by deploy/local/up.sh; overwritten on every start. One standalone server.
tickTime=2000
dataDir=${ZK_DIR}/data
clientPort=${ZK_PORT}
clientPortAddress=127.0.0.1
maxClientCnxns=0
# ZooKeeper 3.5+ starts an admin web server on 8080 by default: not wanted here.
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr
autopurge.purgeInterval=1
EOF
    cat >"${ZK_DIR}/log4j.properties" <<'EOF'
# Generated by deploy/local/up.sh: everything to stdout, i.e. logs/cluster-zookeeper.log.
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n
EOF
}

# `srvr`, not `ruok`: ruok answers imok as soon as the process listens, while a
# server still loading its data refuses sessions ("not currently serving
# requests"), and a ClickHouse node starting then fails to attach its replicated
# tables and exits. srvr names the server's mode only once it serves.
zookeeper_healthy() {
    local answer
    answer="$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf srvr >&3; cat <&3' _ "${ZK_PORT}" 2>/dev/null || true)"
    [[ "${answer}" == *"Mode: standalone"* ]]
}

start_zookeeper() {
    local pid
    if pid="$(running_pid cluster-zookeeper "${ZK_DIR}/zoo.cfg")"; then
        if zookeeper_healthy; then
            info "cluster: zookeeper already running (pid ${pid})"
            return 0
        fi
        wait_healthy cluster-zookeeper "${ZK_TIMEOUT}" zookeeper_healthy
        return 0
    fi
    zookeeper_install
    ensure_port_free cluster-zookeeper "${ZK_PORT}"
    zookeeper_write_config
    # The jar's manifest names its dependencies; log4j and its slf4j binding are added
    # when present so the log says something (without them slf4j logs nothing).
    local classpath="${ZK_DIR}:${ZK_JAR}" jar
    for jar in /usr/share/java/slf4j-log4j12.jar /usr/share/java/log4j-1.2.jar; do
        [[ -f "${jar}" ]] && classpath+=":${jar}"
    done
    info "cluster: starting zookeeper on 127.0.0.1:${ZK_PORT} (data in ${ZK_DIR}/data)"
    launch cluster-zookeeper "${ZK_DIR}" java -Xmx256m -cp "${classpath}" \
        "-Dlog4j.configuration=file:${ZK_DIR}/log4j.properties" \
        org.apache.zookeeper.server.ZooKeeperServerMain "${ZK_DIR}/zoo.cfg"
    wait_healthy cluster-zookeeper "${ZK_TIMEOUT}" zookeeper_healthy
}

# cluster_write_node_config N : config.d/cluster.xml of node N (merged into config.xml by
# clickhouse-server): ZooKeeper, both clusters, this node's macros, the DDL queue.
cluster_write_node_config() {
    local n="$1" dir="${CLUSTER_DIR}/clickhouse-$1"
    mkdir -p "${dir}/config.d"
    cat >"${dir}/config.d/cluster.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/local/up.sh cluster; overwritten on every start. Format: ClickHouse 18.16. -->
<yandex>
    <zookeeper>
        <node>
            <host>127.0.0.1</host>
            <port>${ZK_PORT}</port>
        </node>
        <session_timeout_ms>30000</session_timeout_ms>
    </zookeeper>
    <remote_servers>
        <strata_2shards>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>$(cluster_tcp_port 1)</port></replica>
            </shard>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>$(cluster_tcp_port 2)</port></replica>
            </shard>
        </strata_2shards>
        <strata_replicated>
            <shard>
                <internal_replication>true</internal_replication>
                <replica><host>127.0.0.1</host><port>$(cluster_tcp_port 1)</port></replica>
                <replica><host>127.0.0.1</host><port>$(cluster_tcp_port 3)</port></replica>
            </shard>
        </strata_replicated>
    </remote_servers>
    <macros>
        <shard>$(cluster_node_shard "${n}")</shard>
        <replica>node${n}</replica>
    </macros>
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
    <!-- A node killed mid-insert restarts with parts on disk that ZooKeeper never
         registered (inserts not acknowledged). Past the default ratio of 0.5 such
         parts the table refuses to attach ("doesn't look like the set of parts in
         ZooKeeper") and the server exits; at 1 they are detached and the replica
         fetches the acknowledged data from the others (OPERATIONS, Failure modes). -->
    <merge_tree>
        <replicated_max_ratio_of_wrong_parts>1</replicated_max_ratio_of_wrong_parts>
    </merge_tree>
</yandex>
EOF
}

# ClickHouse answers and its ZooKeeper session works.
cluster_node_healthy() {
    clickhouse_healthy &&
        [[ "$(curl -sf --max-time 3 "http://127.0.0.1:${CH_HTTP_PORT}/" \
            --data-binary "SELECT count() > 0 FROM system.zookeeper WHERE path = '/'" 2>/dev/null)" == 1* ]]
}

# start_cluster_node N : one ClickHouse node, written and started by the single-node
# helpers with this node's directory and ports (bash's dynamic scoping: the helpers see
# these locals).
start_cluster_node() {
    local n="$1"
    local component="cluster-clickhouse-${n}"
    local CH_DIR="${CLUSTER_DIR}/clickhouse-${n}"
    local CH_HTTP_PORT CH_HTTPS_PORT CH_TCP_PORT CH_INTERSERVER_PORT pid bin
    # No HTTPS on cluster nodes: ClickHouse binds its ports with SO_REUSEPORT,
    # so nodes sharing the single server's HTTPS port would each take a share
    # of its connections.
    CH_HTTPS_PORT=""
    CH_HTTP_PORT="$(cluster_http_port "${n}")"
    CH_TCP_PORT="$(cluster_tcp_port "${n}")"
    CH_INTERSERVER_PORT="$(cluster_interserver_port "${n}")"
    if pid="$(running_pid "${component}" "${CH_DIR}/config.xml")"; then
        if cluster_node_healthy; then
            info "cluster: node${n} already running (pid ${pid})"
            return 0
        fi
        wait_healthy "${component}" "${CH_TIMEOUT}" cluster_node_healthy "${CH_DIR}/logs/clickhouse-server.err.log"
        return 0
    fi
    ensure_port_free "${component}" "${CH_HTTP_PORT}" "${CH_TCP_PORT}" "${CH_INTERSERVER_PORT}"
    clickhouse_write_config
    cluster_write_node_config "${n}"
    bin="$(clickhouse_bin)"
    info "cluster: starting node${n} (shard $(cluster_node_shard "${n}"), http ${CH_HTTP_PORT}, tcp ${CH_TCP_PORT}, interserver ${CH_INTERSERVER_PORT})"
    launch "${component}" "${CH_DIR}" "${bin}" "--config-file=${CH_DIR}/config.xml"
    wait_healthy "${component}" "${CH_TIMEOUT}" cluster_node_healthy "${CH_DIR}/logs/clickhouse-server.err.log"
}

start_cluster() {
    need_curl
    clickhouse_install
    start_zookeeper
    local n
    for n in "${CLUSTER_NODES[@]}"; do
        start_cluster_node "${n}"
    done
}

write_cluster_env() {
    local env_file="${STRATA_HOME}/cluster.env" tmp n
    tmp="$(mktemp "${STRATA_HOME}/.cluster.env.XXXXXX")"
    {
        echo "# Generated by deploy/local/up.sh cluster - source this file: . \"${env_file}\""
        echo "# strata_2shards: node1 (shard 01), node2 (shard 02); strata_replicated: node1 and node3 (shard 01)"
        echo "export STRATA_CLUSTER_ZOOKEEPER=127.0.0.1:${ZK_PORT}"
        for n in "${CLUSTER_NODES[@]}"; do
            echo "export STRATA_CLUSTER_NODE${n}_URL=http://127.0.0.1:$(cluster_http_port "${n}")"
        done
    } >"${tmp}"
    mv -f "${tmp}" "${env_file}"
}

# ---------------------------------------------------------------------------------------
# tls: a Kafka listener behind TLS, for the tests of Strata's TLS client
# ---------------------------------------------------------------------------------------

TLS_DIR="${STRATA_HOME}/tls"

# A test-only CA and a server certificate for 127.0.0.1 / localhost, made once.
tls_material() {
    [[ -s "${TLS_DIR}/ca.pem" && -s "${TLS_DIR}/server.pem" && -s "${TLS_DIR}/server-key.pem" ]] && return 0
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    mkdir -p "${TLS_DIR}"
    info "tls: creating a test CA and a server certificate for 127.0.0.1 in ${TLS_DIR}"
    if ! (
        cd "${TLS_DIR}"
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
            -keyout ca-key.pem -out ca.pem -subj "/CN=Strata local test CA"
        openssl req -newkey rsa:2048 -nodes -sha256 \
            -keyout server-key.pem -out server.csr -subj "/CN=localhost"
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >server-ext.cnf
        openssl x509 -req -sha256 -days 3650 -in server.csr -CA ca.pem -CAkey ca-key.pem \
            -CAcreateserial -extfile server-ext.cnf -out server.pem
        chmod 600 ca-key.pem server-key.pem
    ) >"$(log_file tls-material)" 2>&1; then
        tail -n 20 "$(log_file tls-material)" >&2 || true
        die "tls: openssl failed (see $(log_file tls-material))"
    fi
}

stunnel_bin() {
    command -v stunnel4 2>/dev/null || command -v stunnel 2>/dev/null
}

# Tansu 0.6.0 parses --cert but never wraps its listener in TLS, so TLS is
# terminated by stunnel on TLS_KAFKA_PORT, in front of a second Tansu on
# loopback that advertises stunnel's port: every connection a client makes
# after the bootstrap (metadata names that port) goes through TLS too.
start_tls() {
    tls_material
    tansu_install
    stunnel_bin >/dev/null || apt_install stunnel4
    local pid
    if pid="$(running_pid tls-kafka-broker tansu)" && ! owned_by "${pid}" "--authentication"; then
        # Left by a failed start or an older up.sh: it must require SASL.
        info "tls-kafka-broker: running without --authentication (pid ${pid}): restarting it"
        signal_stop tls-kafka-broker
    fi
    if pid="$(running_pid tls-kafka-broker tansu)"; then
        info "tls-kafka-broker: already running (pid ${pid})"
    else
        ensure_port_free tls-kafka-broker "${TLS_KAFKA_BROKER_PORT}"
        mkdir -p "${TLS_DIR}/tansu"
        # The SCRAM users, made once: `tansu user create` does not
        # authenticate, so it runs against the broker started without
        # --authentication, which then restarts requiring it.
        if [[ ! -f "${TLS_DIR}/tansu/users" ]]; then
            tls_broker_launch
            local mechanism
            for mechanism in scram256 scram512; do
                "$(tansu_bin)" user create --broker "tcp://127.0.0.1:${TLS_KAFKA_BROKER_PORT}" \
                    --mechanism "${mechanism}" "${TLS_SASL_USER}" "${TLS_SASL_PASSWORD}" \
                    >>"$(log_file tls-kafka-broker)" 2>&1 || {
                    signal_stop tls-kafka-broker
                    die "tls-kafka-broker: creating the SCRAM user failed (see $(log_file tls-kafka-broker))"
                }
            done
            echo "${TLS_SASL_USER}" >"${TLS_DIR}/tansu/users"
            signal_stop tls-kafka-broker
        fi
        tls_broker_launch --authentication
    fi
    if pid="$(running_pid tls-kafka stunnel)"; then
        info "tls-kafka: already running (pid ${pid})"
        return 0
    fi
    ensure_port_free tls-kafka "${TLS_KAFKA_PORT}"
    cat >"${TLS_DIR}/stunnel.conf" <<EOF
; Generated by deploy/local/up.sh tls; overwritten on every start.
foreground = yes
pid =
[kafka]
accept = 127.0.0.1:${TLS_KAFKA_PORT}
connect = 127.0.0.1:${TLS_KAFKA_BROKER_PORT}
cert = ${TLS_DIR}/server.pem
key = ${TLS_DIR}/server-key.pem
EOF
    info "tls-kafka: starting stunnel: TLS on 127.0.0.1:${TLS_KAFKA_PORT} -> 127.0.0.1:${TLS_KAFKA_BROKER_PORT}"
    launch tls-kafka "${TLS_DIR}" "$(stunnel_bin)" "${TLS_DIR}/stunnel.conf"
    wait_healthy tls-kafka "${KAFKA_TIMEOUT}" tls_kafka_healthy
}

# SCRAM credentials of the TLS broker (SCRAM-SHA-256 and -512), test-only.
TLS_SASL_USER=strata
TLS_SASL_PASSWORD=strata-test-secret

# tls_broker_launch [--authentication] : the Tansu behind stunnel.
tls_broker_launch() {
    info "tls-kafka-broker: starting tansu on 127.0.0.1:${TLS_KAFKA_BROKER_PORT}, advertising the TLS port ${TLS_KAFKA_PORT} ${1:-}"
    launch tls-kafka-broker "${TLS_DIR}/tansu" env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT \
        "RUST_LOG=${KAFKA_LOG}" "$(tansu_bin)" broker \
        --cluster-id strata-local-tls \
        --listener-url "tcp://127.0.0.1:${TLS_KAFKA_BROKER_PORT}" \
        --advertised-listener-url "tcp://127.0.0.1:${TLS_KAFKA_PORT}" \
        --storage-engine "sqlite://tansu.db" "$@"
    wait_healthy tls-kafka-broker "${KAFKA_TIMEOUT}" tls_broker_healthy
}

# signal_stop COMPONENT : SIGTERM, then wait for it to exit (up to 20 s).
signal_stop() {
    local pid i
    pid="$(read_pid "$1")"
    [[ -n "${pid}" ]] || return 0
    kill -TERM "${pid}" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        is_alive "${pid}" || break
        sleep 0.1
    done
    is_alive "${pid}" && kill -KILL "${pid}" 2>/dev/null || true
    rm -f "$(pid_file "$1")"
}

tls_broker_healthy() { kafka_answers "${TLS_KAFKA_BROKER_PORT}"; }
tls_kafka_healthy() { kafka_answers "${TLS_KAFKA_PORT}" "${TLS_DIR}/ca.pem"; }

write_tls_env() {
    local env_file="${STRATA_HOME}/tls.env" tmp
    tmp="$(mktemp "${STRATA_HOME}/.tls.env.XXXXXX")"
    {
        echo "# Generated by deploy/local/up.sh tls - source this file: . \"${env_file}\""
        echo "export STRATA_TLS_KAFKA_BROKERS=127.0.0.1:${TLS_KAFKA_PORT}"
        echo "export STRATA_TLS_CA=${TLS_DIR}/ca.pem"
        echo "export STRATA_TLS_KAFKA_SASL_USER=${TLS_SASL_USER}"
        echo "export STRATA_TLS_KAFKA_SASL_PASSWORD=${TLS_SASL_PASSWORD}"
    } >"${tmp}"
    mv -f "${tmp}" "${env_file}"
}

# ---------------------------------------------------------------------------------------
# stack.env
# ---------------------------------------------------------------------------------------

# Keep the existing line for components not started in this run (they may run on
# non-default ports); (re)compute the lines for the components started now.
write_stack_env() {
    local env_file="${STRATA_HOME}/stack.env" tmp
    local -A value=(
        [STRATA_CLICKHOUSE_URL]="http://127.0.0.1:${CH_HTTP_PORT}"
        [STRATA_CLICKHOUSE_HTTPS_URL]="https://127.0.0.1:${CH_HTTPS_PORT}"
        [STRATA_TLS_CA]="${TLS_DIR}/ca.pem"
        [STRATA_KAFKA_BROKERS]="127.0.0.1:${KAFKA_PORT}"
        [STRATA_S3_ENDPOINT]="http://127.0.0.1:${S3_PORT}"
    )
    local -A owner=(
        [STRATA_CLICKHOUSE_URL]=clickhouse
        [STRATA_CLICKHOUSE_HTTPS_URL]=clickhouse
        [STRATA_TLS_CA]=clickhouse
        [STRATA_KAFKA_BROKERS]=kafka
        [STRATA_S3_ENDPOINT]=s3
    )
    local key line
    tmp="$(mktemp "${STRATA_HOME}/.stack.env.XXXXXX")"
    {
        echo "# Generated by deploy/local/up.sh - source this file: . \"${env_file}\""
        for key in STRATA_CLICKHOUSE_URL STRATA_CLICKHOUSE_HTTPS_URL STRATA_TLS_CA STRATA_KAFKA_BROKERS STRATA_S3_ENDPOINT; do
            line=""
            if [[ " ${SELECTED[*]} " != *" ${owner[${key}]} "* && -f "${env_file}" ]]; then
                line="$(grep -E "^export ${key}=" "${env_file}" | tail -n 1 || true)"
            fi
            [[ -n "${line}" ]] || line="export ${key}=${value[${key}]}"
            echo "${line}"
        done
        echo "export AWS_ACCESS_KEY_ID=testing"
        echo "export AWS_SECRET_ACCESS_KEY=testing"
        echo "export AWS_REGION=us-east-1"
    } >"${tmp}"
    mv -f "${tmp}" "${env_file}"
}

# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------

SELECTED=()
for arg in "$@"; do
    case "${arg}" in
        -h | --help)
            usage
            exit 0
            ;;
        clickhouse | kafka | s3 | cluster | tls)
            [[ " ${SELECTED[*]} " == *" ${arg} "* ]] || SELECTED+=("${arg}")
            ;;
        *) die "unknown component '${arg}' (expected: ${ALL_COMPONENTS[*]} cluster tls)" ;;
    esac
done
((${#SELECTED[@]})) || SELECTED=("${ALL_COMPONENTS[@]}")

validate_port STRATA_CLICKHOUSE_HTTP_PORT "${CH_HTTP_PORT}"
validate_port STRATA_CLICKHOUSE_HTTPS_PORT "${CH_HTTPS_PORT}"
validate_port STRATA_CLICKHOUSE_TCP_PORT "${CH_TCP_PORT}"
validate_port STRATA_CLICKHOUSE_INTERSERVER_PORT "${CH_INTERSERVER_PORT}"
validate_port STRATA_KAFKA_PORT "${KAFKA_PORT}"
validate_port STRATA_S3_PORT "${S3_PORT}"
validate_port STRATA_TLS_KAFKA_PORT "${TLS_KAFKA_PORT}"
validate_port STRATA_TLS_KAFKA_BROKER_PORT "${TLS_KAFKA_BROKER_PORT}"
validate_port STRATA_CLUSTER_ZOOKEEPER_PORT "${ZK_PORT}"
for n in "${CLUSTER_NODES[@]}"; do
    validate_port STRATA_CLUSTER_HTTP_PORT_BASE+${n} "$((CLUSTER_HTTP_BASE + n))"
    validate_port STRATA_CLUSTER_TCP_PORT_BASE+${n} "$((CLUSTER_TCP_BASE + n))"
    validate_port STRATA_CLUSTER_INTERSERVER_PORT_BASE+${n} "$((CLUSTER_INTERSERVER_BASE + n))"
done
command -v setsid >/dev/null 2>&1 || die "setsid (util-linux) is required"
mkdir -p "${PID_DIR}" "${LOG_DIR}"
info "STRATA_HOME=${STRATA_HOME}; components: ${SELECTED[*]}"

for component in "${SELECTED[@]}"; do
    "start_${component}"
done

# stack.env belongs to the single-node stack: left alone when only the cluster started.
if [[ " ${SELECTED[*]} " == *" clickhouse "* || " ${SELECTED[*]} " == *" kafka "* || " ${SELECTED[*]} " == *" s3 "* ]]; then
    write_stack_env
fi
if [[ " ${SELECTED[*]} " == *" cluster "* ]]; then
    write_cluster_env
fi
if [[ " ${SELECTED[*]} " == *" tls "* ]]; then
    write_tls_env
fi

info "endpoints:"
for component in "${SELECTED[@]}"; do
    case "${component}" in
        clickhouse) info "  clickhouse  http://127.0.0.1:${CH_HTTP_PORT}  (https://127.0.0.1:${CH_HTTPS_PORT} with the test CA ${TLS_DIR}/ca.pem; native tcp 127.0.0.1:${CH_TCP_PORT}, user default, no password)" ;;
        kafka) info "  kafka       127.0.0.1:${KAFKA_PORT}  (tansu)" ;;
        s3) info "  s3          http://127.0.0.1:${S3_PORT}  (moto; AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1)" ;;
        tls) info "  kafka (TLS) 127.0.0.1:${TLS_KAFKA_PORT}  (stunnel -> tansu on 127.0.0.1:${TLS_KAFKA_BROKER_PORT}; CA ${TLS_DIR}/ca.pem; SASL/SCRAM user ${TLS_SASL_USER}; . ${STRATA_HOME}/tls.env)" ;;
        cluster)
            info "  zookeeper   127.0.0.1:${ZK_PORT}"
            for n in "${CLUSTER_NODES[@]}"; do
                info "  node${n}       http://127.0.0.1:$(cluster_http_port "${n}")  (native tcp 127.0.0.1:$(cluster_tcp_port "${n}"), shard $(cluster_node_shard "${n}"), replica node${n})"
            done
            ;;
    esac
done
if [[ " ${SELECTED[*]} " == *" cluster "* ]]; then
    info "cluster environment written to ${STRATA_HOME}/cluster.env (use: . ${STRATA_HOME}/cluster.env)"
fi
if [[ " ${SELECTED[*]} " == *" tls "* ]]; then
    info "TLS environment written to ${STRATA_HOME}/tls.env (use: . ${STRATA_HOME}/tls.env)"
fi
if [[ " ${SELECTED[*]} " == *" clickhouse "* || " ${SELECTED[*]} " == *" kafka "* || " ${SELECTED[*]} " == *" s3 "* ]]; then
    info "environment written to ${STRATA_HOME}/stack.env (use: . ${STRATA_HOME}/stack.env)"
fi
