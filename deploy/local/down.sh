#!/usr/bin/env bash
#
# deploy/local/down.sh - stop the local Strata test stack started by deploy/local/up.sh.
#
# Stops exactly the processes recorded in $STRATA_HOME/pids/<component>.pid (SIGTERM,
# up to 20 s grace, then SIGKILL) and removes their PID files. Processes it did not start
# (e.g. the system clickhouse-server service) are never touched.
#
# Usage:
#   deploy/local/down.sh                        # stop all: clickhouse kafka s3
#   deploy/local/down.sh clickhouse             # stop only the named components
#   deploy/local/down.sh cluster                # stop the cluster of `up.sh cluster`:
#                                               #   its three ClickHouse nodes, then ZooKeeper
#                                               #   (--purge deletes $STRATA_HOME/cluster/)
#   deploy/local/down.sh tls                    # stop stunnel and the Tansu behind it of
#                                               #   `up.sh tls` (--purge deletes its broker's data,
#                                               #   $STRATA_HOME/tls/tansu/; the test CA stays)
#   deploy/local/down.sh --purge [component...] # stop, then delete their data:
#                                               #   $STRATA_HOME/<clickhouse|tansu|s3>/ and logs
#   deploy/local/down.sh --help
#
# Environment:
#   STRATA_HOME   state dir used by up.sh (default: <repo root>/.strata)

set -euo pipefail

readonly LOG_PREFIX="[strata-stack]"
readonly ALL_COMPONENTS=(clickhouse kafka s3)
readonly STOP_TIMEOUT=20

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/../.." && pwd)"
STRATA_HOME="${STRATA_HOME:-${REPO_ROOT}/.strata}"
# Relative STRATA_HOME values are taken relative to the caller's cwd (servers run elsewhere).
[[ "${STRATA_HOME}" == /* ]] || STRATA_HOME="${PWD}/${STRATA_HOME}"
PID_DIR="${STRATA_HOME}/pids"
LOG_DIR="${STRATA_HOME}/logs"

info() { printf '%s %s\n' "${LOG_PREFIX}" "$*"; }
warn() { printf '%s WARNING: %s\n' "${LOG_PREFIX}" "$*" >&2; }
die() {
    printf '%s ERROR: %s\n' "${LOG_PREFIX}" "$*" >&2
    exit 1
}

usage() {
    awk 'NR < 3 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
}

# The processes (PID file names) of the cluster, in stopping order.
readonly CLUSTER_PROCESSES=(cluster-clickhouse-1 cluster-clickhouse-2 cluster-clickhouse-3 cluster-zookeeper)
# The processes of `up.sh tls`, in stopping order.
readonly TLS_PROCESSES=(tls-kafka tls-kafka-broker)

# Pattern expected in the process command line (guards against PID reuse).
process_pattern() {
    case "$1" in
        clickhouse | cluster-clickhouse-*) echo clickhouse ;;
        kafka | tls-kafka-broker) echo tansu ;;
        tls-kafka) echo stunnel ;;
        s3) echo moto ;;
        cluster-zookeeper) echo zookeeper ;;
    esac
}

# Data directory of a component, relative to STRATA_HOME.
data_dir() {
    case "$1" in
        clickhouse) echo clickhouse ;;
        kafka) echo tansu ;;
        s3) echo s3 ;;
        cluster) echo cluster ;;
        # The broker's data only: the test CA and certificates stay (ClickHouse's
        # HTTPS port serves them too).
        tls) echo tls/tansu ;;
    esac
}

is_alive() {
    local pid="$1" state
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
    kill -0 "${pid}" 2>/dev/null || return 1
    state="$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null || true)"
    [[ "${state}" != "Z" ]]
}

owned_by() {
    local pid="$1" pattern="$2" cmdline
    cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true)"
    [[ "${cmdline}" == *"${pattern}"* ]]
}

# signal_process SIG PID : signal the process group when PID leads it (up.sh starts each
# server with setsid, so this also reaches any helper children), else just PID.
signal_process() {
    local sig="$1" pid="$2" pgid
    pgid="$(ps -o pgid= -p "${pid}" 2>/dev/null | tr -d ' ' || true)"
    if [[ "${pgid}" == "${pid}" ]]; then
        kill "-${sig}" -- "-${pid}" 2>/dev/null || true
    else
        kill "-${sig}" "${pid}" 2>/dev/null || true
    fi
}

stop_component() {
    local component="$1" pid_file pid pattern i
    pid_file="${PID_DIR}/${component}.pid"
    if [[ ! -f "${pid_file}" ]]; then
        info "${component}: not running (no PID file)"
        return 0
    fi
    pid="$(tr -dc '0-9' <"${pid_file}")"
    pattern="$(process_pattern "${component}")"
    if ! is_alive "${pid}"; then
        info "${component}: not running (stale PID file for pid '${pid}'); removing it"
        rm -f "${pid_file}"
        return 0
    fi
    if ! owned_by "${pid}" "${pattern}"; then
        warn "${component}: pid ${pid} is alive but is not a '${pattern}' process (PID reused?); not killing it, removing the PID file"
        rm -f "${pid_file}"
        return 0
    fi
    info "${component}: stopping pid ${pid} (SIGTERM)"
    signal_process TERM "${pid}"
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        is_alive "${pid}" || break
        sleep 0.1
    done
    if is_alive "${pid}"; then
        warn "${component}: still running after ${STOP_TIMEOUT}s; sending SIGKILL"
        signal_process KILL "${pid}"
        for ((i = 0; i < 50; i++)); do
            is_alive "${pid}" || break
            sleep 0.1
        done
        is_alive "${pid}" && die "${component}: pid ${pid} survived SIGKILL"
    fi
    rm -f "${pid_file}"
    info "${component}: stopped"
}

purge_component() {
    local component="$1" dir
    dir="${STRATA_HOME}/$(data_dir "${component}")"
    if [[ -e "${dir}" ]]; then
        info "${component}: purging ${dir}"
        rm -rf -- "${dir}"
    fi
    rm -f -- "${LOG_DIR}/${component}.log"
    if [[ "${component}" == cluster ]]; then
        local process
        for process in "${CLUSTER_PROCESSES[@]}"; do
            rm -f -- "${LOG_DIR}/${process}.log"
        done
        rm -f -- "${STRATA_HOME}/cluster.env"
    fi
    if [[ "${component}" == tls ]]; then
        local process
        for process in "${TLS_PROCESSES[@]}" tls-material; do
            rm -f -- "${LOG_DIR}/${process}.log"
        done
        rm -f -- "${STRATA_HOME}/tls.env"
    fi
}

PURGE=0
SELECTED=()
for arg in "$@"; do
    case "${arg}" in
        -h | --help)
            usage
            exit 0
            ;;
        --purge) PURGE=1 ;;
        clickhouse | kafka | s3 | cluster | tls)
            [[ " ${SELECTED[*]} " == *" ${arg} "* ]] || SELECTED+=("${arg}")
            ;;
        *) die "unknown argument '${arg}' (expected: --purge, ${ALL_COMPONENTS[*]} cluster tls)" ;;
    esac
done
((${#SELECTED[@]})) || SELECTED=("${ALL_COMPONENTS[@]}")

if [[ ! -d "${STRATA_HOME}" ]]; then
    info "nothing to do: ${STRATA_HOME} does not exist"
    exit 0
fi

for component in "${SELECTED[@]}"; do
    if [[ "${component}" == cluster ]]; then
        for process in "${CLUSTER_PROCESSES[@]}"; do
            stop_component "${process}"
        done
    elif [[ "${component}" == tls ]]; then
        for process in "${TLS_PROCESSES[@]}"; do
            stop_component "${process}"
        done
    else
        stop_component "${component}"
    fi
    if ((PURGE)); then
        purge_component "${component}"
    fi
done
if ((PURGE)); then
    info "done: stopped and purged ${SELECTED[*]} (STRATA_HOME=${STRATA_HOME})"
else
    info "done: stopped ${SELECTED[*]}; data kept in ${STRATA_HOME} (use --purge to delete it)"
fi
