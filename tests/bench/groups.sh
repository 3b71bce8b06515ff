#!/usr/bin/env bash
# The consumer-group benchmark in one command:
#
#   ./tests/bench/groups.sh
#
# It starts `runnel dev` on free ports with a throw-away data directory and
# runs tests/bench/groups.py (confluent-kafka, i.e. librdkafka) against its
# Kafka edge:
#   1. offset commits/s, synchronous (1 consumer; 8 of one group; 8 of 8
#      groups) and asynchronous, with p50/p99 commit latency, against a
#      baseline taken in the same run: tiny records produced with acks=all
#      one at a time (produce + flush), i.e. one durable append round trip;
#   2. rebalance time of a 10-member group on 20 partitions (cooperative-sticky
#      and eager/range): all assigned, an 11th joins, one leaves (median of 3),
#      with librdkafka's default heartbeat.interval.ms (3000) and with 100;
#   3. consume throughput through a group (subscribe, auto commit) against
#      direct partition consumption (assign, no group) of the same 1 M
#      records in the same run; 3 members of one group against 3 assign()ed
#      consumers; with fetch.queue.backoff.ms=10 and librdkafka's default.
# Then it prints one markdown table per part and the command that produced
# them, and stops everything. About 3 minutes. Nothing asserts a time.
#
# It needs target/release/runnel (built with `cargo build --release -p runnel`
# when missing or too old to have --initial-rebalance-delay-ms) and the venv
# tests/python/.venv with confluent-kafka (made from
# tests/python/requirements.txt when missing).
#
# Knobs (environment):
#   REBALANCE_DELAY_MS=0   runnel's group.initial.rebalance.delay.ms (its
#                          default is 3000; 0 so the first join is not a
#                          fixed 3 s wait)
#   HEARTBEAT_MS=3000,100  librdkafka heartbeat.interval.ms of the rebalance
#                          members, one set of rows each (3000: librdkafka's
#                          default; 100: to show the server's own share)
#   COMMIT_SECONDS=10      length of each commit workload
#   REBALANCE_RUNS=3       runs per assignor (the median is reported)
#   RECORDS=1000000        records of the consume workload
#   RECORD_BYTES=100       their value size
#   FLUSH=always           runnel storage flush policy (always: fsync before ack)
#   ONLY=commits,rebalance,consume   the parts to run
#   BENCH_OUT=DIR          logs and summary (default target/bench/groups-<time>)
#   RUNNEL_BIN=PATH        another runnel binary (default target/release/runnel)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

REBALANCE_DELAY_MS=${REBALANCE_DELAY_MS:-0}
HEARTBEAT_MS=${HEARTBEAT_MS:-3000,100}
COMMIT_SECONDS=${COMMIT_SECONDS:-10}
REBALANCE_RUNS=${REBALANCE_RUNS:-3}
RECORDS=${RECORDS:-1000000}
RECORD_BYTES=${RECORD_BYTES:-100}
FLUSH=${FLUSH:-always}
ONLY=${ONLY:-commits,rebalance,consume}
OUT=${BENCH_OUT:-$ROOT/target/bench/groups-$(date -u +%Y%m%dT%H%M%SZ)}
RUNNEL=${RUNNEL_BIN:-$ROOT/target/release/runnel}
VENV=${RUNNEL_PY_VENV:-$ROOT/tests/python/.venv}

mkdir -p "$OUT"
log() { printf '== %s\n' "$*" >&2; }
die() { printf 'groups.sh: %s\n' "$*" >&2; exit 1; }

PID=
DATA=
cleanup() {
    if [[ -n "$PID" ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    if [[ -n "$DATA" ]]; then rm -rf "$DATA"; fi
}
trap cleanup EXIT

if [[ ! -x "$RUNNEL" ]] || ! "$RUNNEL" dev --help 2>/dev/null | grep -q -- --initial-rebalance-delay-ms; then
    log "building runnel (cargo build --release -p runnel)"
    cargo build --release -p runnel
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c "import confluent_kafka" 2>/dev/null ||
    "$VENV/bin/pip" install -q -r "$ROOT/tests/python/requirements.txt"
PY=$VENV/bin/python

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

mkdir -p "$ROOT/target/bench"
DATA=$(mktemp -d "$ROOT/target/bench/data.XXXXXX")
METRICS=127.0.0.1:$(free_port)
DEV_ARGS=(dev --data-dir "$DATA/dev" --coordinator-port 0 --storage-port 0 --ingest-port 0 --groups-port 0
    --kafka-port 0 --metrics-listen "$METRICS" --flush "$FLUSH" --initial-rebalance-delay-ms "$REBALANCE_DELAY_MS")
log "starting runnel ${DEV_ARGS[*]}"
"$RUNNEL" "${DEV_ARGS[@]}" >"$OUT/dev.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do
    grep -q '^  Kafka (edge)' "$OUT/dev.log" && break
    kill -0 "$PID" 2>/dev/null || die "runnel dev stopped; see $OUT/dev.log"
    sleep 0.1
done
KAFKA=$(sed -n 's/^  Kafka (edge) *//p' "$OUT/dev.log" | head -1)
[[ -n "$KAFKA" ]] || die "runnel dev did not start; see $OUT/dev.log"

{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -srm), $(nproc) cores"
    echo "disk: $(df -P "$DATA" | awk 'NR==2 {print $1}') ($(findmnt -no FSTYPE -T "$DATA" 2>/dev/null || echo '?'))"
    echo "runnel: $("$RUNNEL" --version), binary built $(date -u -r "$RUNNEL" +%FT%TZ)"
    echo "confluent-kafka: $("$PY" -c 'import confluent_kafka as c; print(c.version()[0], "librdkafka", c.libversion()[0])')"
    echo "runnel dev: flush $FLUSH, initial rebalance delay $REBALANCE_DELAY_MS ms"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/environment.txt"

log "results in $OUT"
"$PY" "$ROOT/tests/bench/groups.py" --bootstrap "$KAFKA" --metrics "$METRICS" --out "$OUT" --only "$ONLY" \
    --commit-seconds "$COMMIT_SECONDS" --rebalance-runs "$REBALANCE_RUNS" --heartbeat-ms "$HEARTBEAT_MS" \
    --records "$RECORDS" --record-bytes "$RECORD_BYTES" >"$OUT/tables.md" ||
    die "groups.py failed; see $OUT/librdkafka.log and $OUT/dev.log"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/environment.txt"

knobs=""
for k in REBALANCE_DELAY_MS HEARTBEAT_MS COMMIT_SECONDS REBALANCE_RUNS RECORDS RECORD_BYTES FLUSH ONLY; do
    default=$(sed -n "s/^$k=\${$k:-\(.*\)}$/\1/p" "$0")
    [[ "${!k}" == "$default" ]] || knobs+="$k=${!k} "
done
echo
echo "Command: ${knobs}./tests/bench/groups.sh  (runnel ${DEV_ARGS[*]/#$DATA/<tmp>})"
sed 's/^/  /' "$OUT/environment.txt"
echo
cat "$OUT/tables.md"
