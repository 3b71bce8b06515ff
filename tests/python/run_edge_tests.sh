#!/usr/bin/env bash
# Runs the Kafka-client tests of the edge (tests/python/test_edge_*.py).
#
# Without RUNNEL_KAFKA_BOOTSTRAP it starts runnel on free loopback ports with
# throw-away data, runs the tests against it, and stops it:
#   RUNNEL_TOPOLOGY=dev (default)  `runnel dev`, every role in one process;
#   RUNNEL_TOPOLOGY=processes      real etcd, a coordinator, three storage
#                                  nodes, ingest, two groups nodes (the group
#                                  shards split between them) and two edges,
#                                  each its own process; clients bootstrap
#                                  from both edges. RUNNEL_GROUPS_RESTART_CMD
#                                  is exported for the tests: a command that
#                                  kills the groups processes (SIGKILL) and
#                                  starts them again; RUNNEL_STORAGE_CTL
#                                  is a command: `$RUNNEL_STORAGE_CTL kill N`
#                                  (SIGKILL) and `... start N` for storage
#                                  node N.
# Both export RUNNEL_GROUPS_ADDRESS and RUNNEL_COORDINATOR_ADDRESS (gRPC) for
# the tests that run the runnel CLI, and run the groups role with a 500 ms
# KIP-848 heartbeat interval.
# With RUNNEL_KAFKA_BOOTSTRAP=host:port set it runs them against that edge.
# Extra arguments go to pytest (e.g. -k confluent -x).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${RUNNEL_PY_VENV:-$here/.venv}

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c "import confluent_kafka, kafka, aiokafka, pytest, snappy, lz4, zstandard" 2>/dev/null ||
    "$venv/bin/pip" install -q -r "$here/requirements.txt"
if ! command -v kcat >/dev/null && ! command -v kafkacat >/dev/null; then
    echo "kcat is not installed: apt-get install -y kcat" >&2
    exit 1
fi

free_port() {
    "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until a command succeeds (60 s), showing the logs if it never does.
wait_for() {
    for _ in $(seq 1 600); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for: $*" >&2
    for f in "$work"/*.log; do echo "== $f" >&2; tail -20 "$f" >&2; done
    exit 1
}

if [ -z "${RUNNEL_KAFKA_BOOTSTRAP:-}" ]; then
    runnel=${RUNNEL_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/runnel}
    if [ ! -x "$runnel" ]; then (cd "$root" && cargo build -q -p runnel); fi
    work=$(mktemp -d)
    pids=()
    # Processes that groups.sh started (or restarted) are not children of
    # this shell; their pids are in $work/*.pid.
    cleanup() {
        local p alive more=()
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        for p in $(cat "$work"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null && more+=("$p"); done
        wait 2>/dev/null || true
        for _ in $(seq 1 100); do
            alive=0
            for p in "${more[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            [ "$alive" = 0 ] && break
            sleep 0.1
        done
        rm -rf "$work"
    }
    trap cleanup EXIT
    # Retention and compaction passes twice a second, so the tests that
    # watch them (test_log_cleanup.py) need not wait minutes.
    export RUNNEL_RETENTION_CHECK_INTERVAL_MS=500 RUNNEL_LOG_CLEANER_INTERVAL_MS=500
    case "${RUNNEL_TOPOLOGY:-dev}" in
    dev)
        # What a user runs first: `runnel dev`, on free ports.
        dev_ports=(--coordinator-port 0 --storage-port 0 --ingest-port 0 --kafka-port 0)
        dev_help=$("$runnel" dev --help)
        if grep -q -- --groups-port <<<"$dev_help"; then dev_ports+=(--groups-port 0); fi
        # KIP-848 members heartbeat every 500 ms (Kafka's default is 5 s).
        dev_opts=()
        if grep -q -- --consumer-heartbeat-interval-ms <<<"$dev_help"; then
            dev_opts+=(--consumer-heartbeat-interval-ms 500)
        fi
        "$runnel" dev --data-dir "$work/data" "${dev_ports[@]}" "${dev_opts[@]}" --metrics-listen "" \
            >"$work/dev.out" 2>"$work/dev.log" &
        pids+=($!)
        wait_for grep -q 'Kafka (edge)' "$work/dev.out"
        RUNNEL_KAFKA_BOOTSTRAP=$(awk '/Kafka \(edge\)/ {print $3}' "$work/dev.out" | head -1)
        # For the tests that use the runnel CLI (`runnel group describe`).
        RUNNEL_GROUPS_ADDRESS=$(awk '/groups gRPC/ {print $3}' "$work/dev.out" | head -1)
        RUNNEL_COORDINATOR_ADDRESS=$(awk '/coordinator gRPC/ {print $3}' "$work/dev.out" | head -1)
        export RUNNEL_GROUPS_ADDRESS RUNNEL_COORDINATOR_ADDRESS
        ;;
    processes)
        # A deployment: real etcd, every role its own process, three storage
        # nodes and two edges; clients bootstrap from both edges.
        command -v etcd >/dev/null || { echo "etcd is not installed: run tests/setup.sh" >&2; exit 1; }
        ep=$(free_port); pp=$(free_port)
        etcd --name n0 --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$ep" \
            --advertise-client-urls "http://127.0.0.1:$ep" --listen-peer-urls "http://127.0.0.1:$pp" \
            --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
            --initial-cluster "n0=http://127.0.0.1:$pp" >"$work/etcd.log" 2>&1 &
        pids+=($!)
        ms="etcd://127.0.0.1:$ep"
        common=(--metastore "$ms" --cluster "py-$$" --metrics-listen "")
        cp=$(free_port); ip=$(free_port)
        "$runnel" coordinator --listen "127.0.0.1:$cp" --lease-ttl-secs 3 "${common[@]}" >"$work/coordinator.log" 2>&1 &
        pids+=($!)
        # Three storage nodes (replication factor 3 is possible). storage.sh
        # starts node N detached (pid in storage-N.pid) on its own port and
        # data directory; `storage.sh kill N` is a SIGKILL.
        sports=("$(free_port)" "$(free_port)" "$(free_port)")
        {
            echo '#!/usr/bin/env bash'
            echo 'set -u'
            echo "cd $(printf '%q' "$work")"
            echo "runnel=$(printf '%q' "$runnel")"
            echo "common=($(printf '%q ' "${common[@]}"))"
            echo "sports=(${sports[*]})"
            cat <<'SCRIPT'
n=$2
case "$1" in
kill)
    pid=$(cat "storage-$n.pid")
    kill -9 "$pid" 2>/dev/null
    for _ in $(seq 1 100); do
        ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z || break
        sleep 0.1
    done
    echo "== killed (SIGKILL) at $(date +%T.%N)" >>"storage-$n.log"
    ;;
start)
    "$runnel" storage --node-id "$n" --data-dir "storage-$n" --listen "127.0.0.1:${sports[$((n - 1))]}" \
        --lease-ttl-secs 3 "${common[@]}" </dev/null >>"storage-$n.log" 2>&1 &
    echo $! >"storage-$n.pid"
    ;;
esac
SCRIPT
        } >"$work/storage.sh"
        for n in 1 2 3; do bash "$work/storage.sh" start "$n"; done
        export RUNNEL_STORAGE_CTL="bash $work/storage.sh"
        "$runnel" ingest --listen "127.0.0.1:$ip" "${common[@]}" >"$work/ingest.log" 2>&1 &
        pids+=($!)
        # Two groups nodes share the group shards. groups.sh starts them
        # detached (pids in groups-N.pid) and waits until they listen;
        # `groups.sh restart` first kills them with SIGKILL, as a crash would.
        gports=("$(free_port)" "$(free_port)")
        {
            echo '#!/usr/bin/env bash'
            echo 'set -u'
            echo "cd $(printf '%q' "$work")"
            echo "runnel=$(printf '%q' "$runnel")"
            echo "common=($(printf '%q ' "${common[@]}"))"
            echo "cp=$cp"
            echo "gports=(${gports[*]})"
            cat <<'SCRIPT'
# The groups role reads RUNNEL_<KEY>: KIP-848 members heartbeat every 500 ms.
export RUNNEL_CONSUMER_HEARTBEAT_INTERVAL_MS=500
if [ "${1:-}" = restart ]; then
    for n in 1 2; do
        pid=$(cat "groups-$n.pid")
        kill -9 "$pid" 2>/dev/null
        for _ in $(seq 1 100); do
            ps -o stat= -p "$pid" 2>/dev/null | grep -qv Z || break
            sleep 0.1
        done
        echo "== killed (SIGKILL) at $(date +%T.%N)" >>"groups-$n.log"
    done
fi
for n in 1 2; do
    "$runnel" groups --node-id "$n" --listen "127.0.0.1:${gports[$((n - 1))]}" --lease-ttl-secs 3 \
        "${common[@]}" --coordinator-address "127.0.0.1:$cp" </dev/null >>"groups-$n.log" 2>&1 &
    echo $! >"groups-$n.pid"
done
for port in "${gports[@]}"; do
    for i in $(seq 1 300); do
        if (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        if [ "$i" = 300 ]; then echo "groups on port $port is not listening after 30 s" >&2; exit 1; fi
        sleep 0.1
    done
done
SCRIPT
        } >"$work/groups.sh"
        bash "$work/groups.sh" || { tail -20 "$work"/groups-*.log >&2; exit 1; }
        export RUNNEL_GROUPS_RESTART_CMD="bash $work/groups.sh restart"
        # For the tests that use the runnel CLI (`runnel group describe`).
        # (RUNNEL_COORDINATOR_ADDRESS is also the groups role's
        # coordinator_address setting; groups.sh passes the same address.)
        export RUNNEL_GROUPS_ADDRESS="127.0.0.1:${gports[0]}"
        export RUNNEL_COORDINATOR_ADDRESS="127.0.0.1:$cp"
        edges=()
        for n in 1 2; do
            kp=$(free_port)
            "$runnel" edge --node-id "$n" --listen "127.0.0.1:$kp" --ingest-address "127.0.0.1:$ip" \
                --coordinator-address "127.0.0.1:$cp" "${common[@]}" >"$work/edge-$n.log" 2>&1 &
            pids+=($!)
            edges+=("127.0.0.1:$kp")
        done
        # Ready when a topic with a partition per storage node could be made.
        wait_for "$runnel" topic create probe --partitions 2 --validate-only --coordinator "127.0.0.1:$cp"
        wait_for kcat -b "${edges[0]}" -L -m 2
        RUNNEL_KAFKA_BOOTSTRAP=$(IFS=,; echo "${edges[*]}")
        ;;
    *)
        echo "RUNNEL_TOPOLOGY must be dev or processes" >&2
        exit 1
        ;;
    esac
    echo "runnel (${RUNNEL_TOPOLOGY:-dev}) serving Kafka on $RUNNEL_KAFKA_BOOTSTRAP"
    export RUNNEL_KAFKA_BOOTSTRAP
fi

cd "$here"
"$venv/bin/python" -m pytest -q -p no:warnings "$@"
