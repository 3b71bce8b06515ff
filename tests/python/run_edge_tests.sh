#!/usr/bin/env bash
# Runs the Kafka-client tests of the edge (tests/python/test_edge_*.py).
#
# Without RUNNEL_KAFKA_BOOTSTRAP it starts `runnel dev` (every role and the
# edge in one process, as a user runs it) on free loopback ports with a
# throw-away data directory, runs the tests against its Kafka listener, and
# stops it. With RUNNEL_KAFKA_BOOTSTRAP=host:port set it runs them against
# that edge instead.
# Extra arguments go to pytest (e.g. -k confluent -x).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${RUNNEL_PY_VENV:-$here/.venv}

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c "import confluent_kafka, kafka, pytest, snappy, lz4, zstandard" 2>/dev/null ||
    "$venv/bin/pip" install -q -r "$here/requirements.txt"
if ! command -v kcat >/dev/null && ! command -v kafkacat >/dev/null; then
    echo "kcat is not installed: apt-get install -y kcat" >&2
    exit 1
fi

if [ -z "${RUNNEL_KAFKA_BOOTSTRAP:-}" ]; then
    # What a user runs: `runnel dev`, on free ports and a throw-away data dir.
    runnel=${RUNNEL_BIN:-$root/target/debug/runnel}
    if [ ! -x "$runnel" ]; then (cd "$root" && cargo build -q -p runnel); fi
    work=$(mktemp -d)
    "$runnel" dev --data-dir "$work/data" --coordinator-port 0 --storage-port 0 \
        --ingest-port 0 --kafka-port 0 --metrics-listen "" >"$work/out" 2>"$work/err" &
    pid=$!
    trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
    for _ in $(seq 1 600); do
        if grep -q 'Kafka (edge)' "$work/out"; then break; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "runnel dev exited during start-up:" >&2
            cat "$work/err" >&2
            exit 1
        fi
        sleep 0.1
    done
    RUNNEL_KAFKA_BOOTSTRAP=$(awk '/Kafka \(edge\)/ {print $3}' "$work/out" | head -1)
    if [ -z "$RUNNEL_KAFKA_BOOTSTRAP" ]; then
        echo "runnel dev did not start in 60 s; its log:" >&2
        tail -50 "$work/err" >&2
        exit 1
    fi
    echo "runnel dev serving Kafka on $RUNNEL_KAFKA_BOOTSTRAP"
    export RUNNEL_KAFKA_BOOTSTRAP
fi

cd "$here"
"$venv/bin/python" -m pytest -q -p no:warnings "$@"
