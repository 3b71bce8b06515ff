#!/usr/bin/env bash
# The replication benchmark in one command:
#
#   ./tests/bench/replication.sh
#
# It starts real etcd, a coordinator, three storage nodes (flush=always:
# fsync before every acknowledgement) and ingest as separate release
# processes on loopback, then measures with `runnel perf grpc`:
#   1. produce throughput (1 M records of 100 B, 3 partitions, 5 requests in
#      flight) for RF=1 acks=1 (the baseline), RF=1 acks=all, RF=3 acks=1 and
#      RF=3 acks=all with min.insync.replicas=2;
#   2. acknowledgement latency at a fixed 500 records/s, one record per
#      request (p50/p99/max), for RF=1 acks=1 and RF=3 acks=all;
#   3. failover time: a producer sends 200 acks=all records/s to partition 0
#      of an RF=3 topic while that partition's leader is killed with SIGKILL
#      (and restarted later); the longest gap between two acknowledgements
#      is the failover time it saw — KILLS times, each on a fresh topic.
# It prints a markdown table per part with the command, and stops
# everything. Nothing asserts a time.
#
# Knobs: RECORDS=1000000 RECORD_BYTES=100 KILLS=5 LEASE_TTL=3 (seconds:
# how soon a dead node is noticed) RUNNEL_BIN=target/release/runnel
# BENCH_OUT=target/bench/replication-<time>
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
RECORDS=${RECORDS:-1000000}
RECORD_BYTES=${RECORD_BYTES:-100}
KILLS=${KILLS:-5}
LEASE_TTL=${LEASE_TTL:-3}
OUT=${BENCH_OUT:-$ROOT/target/bench/replication-$(date -u +%Y%m%dT%H%M%SZ)}
RUNNEL=${RUNNEL_BIN:-$ROOT/target/release/runnel}
mkdir -p "$OUT"
if [ -z "${RUNNEL_BIN:-}" ]; then cargo build -q --release -p runnel; fi
command -v etcd >/dev/null || { echo "etcd is not installed: run tests/setup.sh" >&2; exit 1; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}" $(cat "$OUT"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

ep=$(free_port); pp=$(free_port)
etcd --name n0 --data-dir "$OUT/etcd" --listen-client-urls "http://127.0.0.1:$ep" \
    --advertise-client-urls "http://127.0.0.1:$ep" --listen-peer-urls "http://127.0.0.1:$pp" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pp" --initial-cluster "n0=http://127.0.0.1:$pp" \
    >"$OUT/etcd.log" 2>&1 &
pids+=($!)
common=(--metastore "etcd://127.0.0.1:$ep" --cluster bench --metrics-listen "")
cp=$(free_port); ip=$(free_port)
"$RUNNEL" coordinator --listen "127.0.0.1:$cp" --lease-ttl-secs "$LEASE_TTL" "${common[@]}" >"$OUT/coordinator.log" 2>&1 &
pids+=($!)
sports=("$(free_port)" "$(free_port)" "$(free_port)")
start_storage() {
    "$RUNNEL" storage --node-id "$1" --data-dir "$OUT/storage-$1" --listen "127.0.0.1:${sports[$(($1 - 1))]}" \
        --lease-ttl-secs "$LEASE_TTL" "${common[@]}" >>"$OUT/storage-$1.log" 2>&1 &
    echo $! >"$OUT/storage-$1.pid"
}
for n in 1 2 3; do start_storage "$n"; done
"$RUNNEL" ingest --listen "127.0.0.1:$ip" "${common[@]}" >"$OUT/ingest.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
    "$RUNNEL" topic create probe --partitions 3 --replication-factor 3 --validate-only \
        --coordinator "127.0.0.1:$cp" >/dev/null 2>&1 && break
    sleep 0.1
done
target=(--coordinator "127.0.0.1:$cp" --ingest "127.0.0.1:$ip" --record-bytes "$RECORD_BYTES" --json)
json() { grep '^{' | tail -1; }
field() { python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print($1)"; }

echo "== 1. produce throughput" | tee "$OUT/summary.md"
{
    echo
    echo "| topic | acks | records/s | MB/s | ratio to RF=1 acks=1 | request p50 µs | request p99 µs |"
    echo "|---|---|---|---|---|---|---|"
} >>"$OUT/summary.md"
base=
for spec in "1 1" "1 -1" "3 1" "3 -1"; do
    set -- $spec
    rf=$1 acks=$2
    r=$("$RUNNEL" perf grpc produce "${target[@]}" --topic "tp-rf$rf-acks$acks" --partitions 3 \
        --replication-factor "$rf" --topic-config min.insync.replicas=$((rf > 1 ? 2 : 1)) \
        --records "$RECORDS" --acks "$acks" | tee -a "$OUT/produce.log" | json)
    rps=$(field "round(d['records_per_s'])" <<<"$r")
    base=${base:-$rps}
    echo "| RF=$rf | $( [ "$acks" = -1 ] && echo all || echo "$acks") | $rps | $(field "round(d['mb_per_s'], 1)" <<<"$r") | $(python3 -c "print(f'{$rps / $base:.2f}')") | $(field "d['latency']['p50_us']" <<<"$r") | $(field "d['latency']['p99_us']" <<<"$r") |" >>"$OUT/summary.md"
done

echo "== 2. acknowledgement latency at 500 records/s"
{
    echo
    echo "| topic | acks | ack p50 µs | ack p99 µs | ack max µs | end-to-end p99 µs |"
    echo "|---|---|---|---|---|---|"
} >>"$OUT/summary.md"
for spec in "1 1" "3 -1"; do
    set -- $spec
    rf=$1 acks=$2
    r=$("$RUNNEL" perf grpc latency "${target[@]}" --topic "lat-rf$rf-acks$acks" \
        --replication-factor "$rf" --topic-config min.insync.replicas=$((rf > 1 ? 2 : 1)) \
        --records 5000 --rate 500 --acks "$acks" | tee -a "$OUT/latency.log" | json)
    echo "| RF=$rf | $( [ "$acks" = -1 ] && echo all || echo "$acks") | $(field "d['latency']['p50_us']" <<<"$r") | $(field "d['latency']['p99_us']" <<<"$r") | $(field "d['latency']['max_us']" <<<"$r") | $(field "d['end_to_end']['p99_us']" <<<"$r") |" >>"$OUT/summary.md"
done

echo "== 3. failover: SIGKILL the leader under acks=all load, $KILLS times"
{
    echo
    echo "| kill | killed node | longest gap between acks (ms) | acknowledged | failed |"
    echo "|---|---|---|---|---|"
} >>"$OUT/summary.md"
gaps=()
for k in $(seq 1 "$KILLS"); do
    topic="failover-$k"
    "$RUNNEL" perf grpc failover "${target[@]}" --topic "$topic" --replication-factor 3 \
        --topic-config min.insync.replicas=2 --rate 200 --duration 16s >"$OUT/failover-$k.log" 2>&1 &
    fo=$!
    sleep 5
    leader=$("$RUNNEL" topic describe "$topic" --coordinator "127.0.0.1:$cp" | awk '/partition 0/ {sub("leader=", "", $3); print $3}')
    kill -9 "$(cat "$OUT/storage-$leader.pid")"
    sleep 6
    start_storage "$leader"
    wait "$fo"
    r=$(json <"$OUT/failover-$k.log")
    gap=$(field "round(d['longest_gap_ms'])" <<<"$r")
    gaps+=("$gap")
    echo "| $k | $leader | $gap | $(field "d['acknowledged']" <<<"$r") | $(field "d['failed']" <<<"$r") |" >>"$OUT/summary.md"
    # Let the restarted node catch up and rejoin before the next round.
    sleep 4
done
median=$(printf '%s\n' "${gaps[@]}" | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
{
    echo
    echo "Median failover time over $KILLS kills: ${median} ms (lease TTL ${LEASE_TTL} s: a dead node is noticed when its lease lapses)."
    echo
    echo "Command: \`RECORDS=$RECORDS RECORD_BYTES=$RECORD_BYTES KILLS=$KILLS LEASE_TTL=$LEASE_TTL ./tests/bench/replication.sh\` ($(date -u +%Y-%m-%d), $(nproc) cores)"
} >>"$OUT/summary.md"
cat "$OUT/summary.md"
