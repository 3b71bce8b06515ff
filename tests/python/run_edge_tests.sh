#!/usr/bin/env bash
# Runs the Kafka-client tests of the edge (tests/python/test_edge_*.py).
#
# Without RUNNEL_KAFKA_BOOTSTRAP it builds and starts a whole runnel cluster
# with an edge in one process (`cargo run -p runnel-edge --example edge_dev`,
# on free loopback ports), runs the tests against it, and stops it. With
# RUNNEL_KAFKA_BOOTSTRAP=host:port set it runs them against that edge.
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
    (cd "$root" && cargo build -q -p runnel-edge --example edge_dev)
    log=$(mktemp -d)
    RUNNEL_EDGE_KAFKA_PORT=${RUNNEL_EDGE_KAFKA_PORT:-0} \
        "$root/target/debug/examples/edge_dev" >"$log/out" 2>"$log/err" &
    pid=$!
    trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 600); do
        if grep -q '^READY ' "$log/out"; then break; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "edge_dev exited during start-up:" >&2
            cat "$log/err" >&2
            exit 1
        fi
        sleep 0.1
    done
    RUNNEL_KAFKA_BOOTSTRAP=$(sed -n 's/^READY //p' "$log/out" | head -1)
    if [ -z "$RUNNEL_KAFKA_BOOTSTRAP" ]; then
        echo "edge_dev did not print READY in 60 s; its log: $log/err" >&2
        exit 1
    fi
    echo "edge_dev listening on $RUNNEL_KAFKA_BOOTSTRAP (log: $log/err)"
    export RUNNEL_KAFKA_BOOTSTRAP
fi

cd "$here"
"$venv/bin/python" -m pytest -q -p no:warnings "$@"
