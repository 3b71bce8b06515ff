#!/usr/bin/env bash
# The one test command (README, CI): installs what the tests need, checks
# formatting and lints, builds, then runs every test — unit, integration
# against real etcd and real runnel processes, real Kafka clients against the
# edge (in `runnel dev` and as separate processes), and the compose stack.
set -euo pipefail
cd "$(dirname "$0")/.."

./tests/setup.sh
export PATH="$PWD/tests/python/.venv/bin:$PATH"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --all-targets --locked

echo "== Rust tests (unit, integration, end to end)"
cargo test --workspace --locked

echo "== Kafka client tests (confluent-kafka, kafka-python, aiokafka, kcat) against runnel dev"
RUNNEL_TOPOLOGY=dev ./tests/python/run_edge_tests.sh
echo "== the same against separate processes: etcd, coordinator, 2 storage nodes, ingest, 2 edges"
RUNNEL_TOPOLOGY=processes ./tests/python/run_edge_tests.sh
echo "== compose stack: local images, Kafka clients from the host, failover, crash recovery"
./tests/compose/test.sh
echo "== all tests passed"
