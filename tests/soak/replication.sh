#!/usr/bin/env bash
# Soak for the replication failure tests: runs each of them many times with
# a different seed (which partition's leader dies, and after how many
# records), bounded by a run count and a time budget, and reports how many
# runs passed and how many acknowledged records were checked.
#
#   tests/soak/replication.sh [RUNS] [SECONDS] [FIRST_SEED]
#
# Defaults: 20 runs, 3600 s, seed 1. Needs what the test suite needs
# (tests/setup.sh). Logs of every run go to target/soak/. Exits non-zero if
# any run failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-20}
budget=${2:-3600}
seed=${3:-1}
tests=(
    killing_the_leader_loses_no_acknowledged_record
    a_frozen_leader_is_replaced_and_rejoins_when_it_wakes
    every_node_killed_at_once_keeps_every_acknowledged_record
    idempotent_retries_are_deduplicated_across_a_failover
)
mkdir -p target/soak
cargo build -q -p runnel
cargo test -q -p runnel-e2e --test replication --no-run
started=$(date +%s)
passed=0 failed=0 records=0 done_runs=0
for ((i = 0; i < runs; i++)); do
    if (($(date +%s) - started > budget)); then
        echo "time budget of ${budget}s spent after $done_runs runs"
        break
    fi
    s=$((seed + i))
    for t in "${tests[@]}"; do
        log="target/soak/seed-$s-$t.log"
        if RUNNEL_SOAK_SEED=$s cargo test -q -p runnel-e2e --test replication -- --exact "$t" --nocapture >"$log" 2>&1; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
            echo "FAILED: seed $s $t (log: $log)"
        fi
        n=$(grep -oE '^[0-9]+ acknowledged' "$log" | awk '{s += $1} END {print s + 0}')
        records=$((records + n))
    done
    done_runs=$((done_runs + 1))
    echo "seed $s: $passed passed, $failed failed so far, $records acknowledged records checked"
done
echo "soak: $done_runs seeds x ${#tests[@]} tests = $((passed + failed)) runs, $passed passed, $failed failed, $records acknowledged records checked"
[ "$failed" = 0 ]
