#!/usr/bin/env bash
# End-to-end test of the compose stack (compose.yaml) with locally built images
# (deploy/build-local-images.sh: no registry needed). From the host it:
#   - checks compose.yaml, the Prometheus config and alert rules (promtool),
#   - brings the stack up on free host ports and waits for every healthcheck,
#   - creates a topic through the coordinator and produces through ingest with
#     the runnel CLI, consumes natively (inside the compose network, and from
#     the host side through the published storage ports),
#   - produces and consumes with Kafka clients (kcat, confluent-kafka) through
#     the edge on the published Kafka port — skipped with a WARNING when the
#     runnel binary has no `edge` role yet,
#   - checks that Prometheus (observability profile) scrapes every role,
#   - kills the active coordinator: topic creation carries on through the
#     standby, and the killed one rejoins when started again,
#   - crashes a storage node (SIGKILL): Docker restarts it, it recovers its
#     log and nothing acknowledged is lost,
#   - kills the leader of an RF=3 topic under acks=all load: every
#     acknowledged record is there afterwards and the node rejoins the ISR,
#   - recreates the ingest container alone (an upgrade of one role) and
#     produces again,
# and removes the stack and its volumes at the end, pass or fail.
#
# Usage: tests/compose/test.sh
#   KEEP=1                     leave the stack up for a look
#   RUNNEL_COMPOSE_NO_BUILD=1  use target/release/runnel as it is (no cargo build)
# Needs: docker with compose (v2 plugin or docker-compose 1.29), root or
# sudo for debootstrap on the first run; kcat and tests/python/.venv for the
# Kafka part (tests/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
started=$SECONDS

step() { printf '\n== compose test: %s\n' "$*"; }
info() { printf '   %s\n' "$*"; }
warn() { printf '\n!!!!! WARNING: %s\n\n' "$*" >&2; }
fail() { printf '\nFAIL: compose test: %s\n' "$*" >&2; exit 1; }

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
docker info >/dev/null 2>&1 || fail "the Docker daemon is not reachable"

RUNNEL="$ROOT/target/release/runnel"

step "build the local images (deploy/build-local-images.sh)"
t=$SECONDS
# --build: `cargo build --release -p runnel` first (a no-op when up to date),
# so the images hold the code being tested, not a stale binary.
# RUNNEL_COMPOSE_NO_BUILD=1 takes target/release/runnel as it is.
if [ "${RUNNEL_COMPOSE_NO_BUILD:-0}" = 1 ]; then
  deploy/build-local-images.sh
else
  deploy/build-local-images.sh --build
fi
info "images ready in $((SECONDS - t)) s"
[ -x "$RUNNEL" ] || fail "no $RUNNEL after the image build"

export RUNNEL_IMAGE=runnel:local ETCD_IMAGE=runnel-etcd:local PROMETHEUS_IMAGE=runnel-prometheus:local

step "static checks: compose.yaml, Prometheus config and alert rules"
"${COMPOSE[@]}" -f compose.yaml --profile observability config -q || fail "compose.yaml does not parse"
if command -v promtool >/dev/null 2>&1; then
  promtool check config deploy/prometheus/prometheus.yml
  promtool check rules deploy/prometheus/alerts.yml
  promtool test rules deploy/prometheus/alerts_test.yml
else
  warn "promtool is not installed (apt-get install prometheus): alert rules NOT checked"
fi

# Free host ports, so the test runs beside anything on 7400/9092/...
read -r P_COORD P_COORD2 P_INGEST P_KAFKA P_PROM P_S1 P_S2 P_S3 < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(8):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
export RUNNEL_PUBLISH_HOST=127.0.0.1
export RUNNEL_COORDINATOR_PORT=$P_COORD RUNNEL_COORDINATOR_2_PORT=$P_COORD2 RUNNEL_INGEST_PORT=$P_INGEST
export RUNNEL_KAFKA_PORT=$P_KAFKA PROMETHEUS_PORT=$P_PROM
export RUNNEL_STORAGE_1_PORT=$P_S1 RUNNEL_STORAGE_2_PORT=$P_S2 RUNNEL_STORAGE_3_PORT=$P_S3
COORD="127.0.0.1:$P_COORD"
COORD2="127.0.0.1:$P_COORD2"
INGEST="127.0.0.1:$P_INGEST"
KAFKA="localhost:$P_KAFKA"

PROJECT="runnel-test-$$"
DC=("${COMPOSE[@]}" -p "$PROJECT" -f compose.yaml --profile observability)
NETWORK="${PROJECT}_default"

TMP="$(mktemp -d)"
teardown() {
  local rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ]; then
    printf '\n== compose test FAILED (exit %s); container states and recent logs:\n' "$rc" >&2
    "${DC[@]}" ps >&2 || true
    "${DC[@]}" logs --no-color --tail=40 >&2 || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    printf '\nKEEP=1: the stack is still up; remove it with:\n  %s down -v\n' "${DC[*]}" >&2
  else
    "${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

cid() { "${DC[@]}" ps -a -q "$1"; }
state() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(cid "$1")"; }
# wait_healthy TIMEOUT SERVICE...: every service healthy (or running, when it has no healthcheck).
wait_healthy() {
  local timeout="$1"; shift
  local deadline=$((SECONDS + timeout)) s st pending
  while :; do
    pending=()
    for s in "$@"; do
      st="$(state "$s" 2>/dev/null || echo missing)"
      # `running` only for a container without a healthcheck (prometheus).
      case "$st" in healthy | running) ;; *) pending+=("$s:$st") ;; esac
    done
    [ "${#pending[@]}" -eq 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && fail "not healthy after ${timeout}s: ${pending[*]}"
    sleep 1
  done
}
# metrics SERVICE PORT: the role's /metrics text, read inside its container
# (the image has bash but no curl).
metrics() {
  docker exec "$(cid "$1")" bash -c \
    'exec 3<>/dev/tcp/127.0.0.1/$0 && printf "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3 && cat <&3' "$2"
}
# retry TIMEOUT CMD...: runs CMD until it succeeds (only for commands that are
# safe to repeat: no produce, which could duplicate records).
retry() {
  local timeout="$1"; shift
  local deadline=$((SECONDS + timeout))
  until "$@" >"$TMP/retry.out" 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      cat "$TMP/retry.out" >&2
      fail "gave up after ${timeout}s: $*"
    fi
    sleep 1
  done
  cat "$TMP/retry.out"
}
# Native consumer inside the compose network (storage nodes by service name).
# The coordinator asked inside the network; after the failover step it is the
# survivor (a killed container's name no longer resolves).
IN_NETWORK_COORDINATOR=coordinator-1
consume_in_network() {
  docker run --rm --network "$NETWORK" "$RUNNEL_IMAGE" \
    consume "$1" --coordinator "$IN_NETWORK_COORDINATOR:7400" --from-beginning --idle-timeout 3s --key-separator :
}
# Native consumer on the host side: the storage nodes' advertised names mapped
# to the host, as a host with `127.0.0.1 storage-1 storage-2 storage-3` in
# /etc/hosts would (docs/deploy.md); --add-host keeps the host's file as it is.
consume_from_host() {
  docker run --rm --network host \
    --add-host storage-1:127.0.0.1 --add-host storage-2:127.0.0.1 --add-host storage-3:127.0.0.1 \
    "$RUNNEL_IMAGE" consume "$1" --coordinator "$COORD" --from-beginning --idle-timeout 3s --key-separator :
}
expect_records() { # expect_records WHAT EXPECTED_FILE ACTUAL_FILE
  if ! diff <(sort "$2") <(sort "$3") >/dev/null; then
    info "expected $(wc -l <"$2") records, got $(wc -l <"$3"); first differences:"
    diff <(sort "$2") <(sort "$3") | head -10 >&2 || true
    fail "$1: records differ"
  fi
  info "$1: all $(wc -l <"$3") records, exactly"
}

# Does this runnel have the Kafka edge yet?
EDGE=1
if ! docker run --rm "$RUNNEL_IMAGE" edge --help >/dev/null 2>&1; then
  EDGE=0
  warn "'runnel edge --help' fails: this binary has no Kafka edge yet. The edge container and EVERY Kafka-client check (kcat, confluent-kafka, the edge scrape target) are SKIPPED."
fi
SERVICES=(etcd coordinator-1 coordinator-2 storage-1 storage-2 storage-3 ingest groups-1 groups-2)
[ "$EDGE" = 1 ] && SERVICES+=(edge)
SERVICES+=(prometheus)

step "docker compose up (${SERVICES[*]})"
t=$SECONDS
"${DC[@]}" up -d "${SERVICES[@]}"
wait_healthy 180 "${SERVICES[@]}"
info "all healthy in $((SECONDS - t)) s; ports: coordinator $COORD (standby $COORD2), ingest $INGEST, kafka $KAFKA, storage $P_S1/$P_S2/$P_S3, prometheus $P_PROM"
"${DC[@]}" ps

step "topic through the coordinator, records through ingest (runnel CLI on the host)"
"$RUNNEL" topic create orders --partitions 6 --coordinator "$COORD"
seq 1 1000 | awk '{print "key-" $1 ":value-" $1}' >"$TMP/orders.expected"
"$RUNNEL" produce orders --key-separator : --ingest "$INGEST" --coordinator "$COORD" <"$TMP/orders.expected"
grep -q "partitions=6" <<<"$("$RUNNEL" topic describe orders --coordinator "$COORD2")" ||
  fail "the standby does not describe the topic"

step "native consumer inside the compose network"
consume_in_network orders >"$TMP/orders.in-network"
expect_records "native consume (compose network)" "$TMP/orders.expected" "$TMP/orders.in-network"

step "native consumer from the host side (published storage ports)"
consume_from_host orders >"$TMP/orders.host"
expect_records "native consume (host, storage-N mapped to 127.0.0.1)" "$TMP/orders.expected" "$TMP/orders.host"

if [ "$EDGE" = 1 ]; then
  step "Kafka clients through the edge at $KAFKA"
  PY=""
  for p in "$ROOT/tests/python/.venv/bin/python" python3; do
    if "$p" -c "import confluent_kafka" >/dev/null 2>&1; then PY="$p"; break; fi
  done
  command -v kcat >/dev/null 2>&1 || [ -n "$PY" ] ||
    fail "no Kafka client: install kcat or the Python clients (tests/setup.sh)"
  if command -v kcat >/dev/null 2>&1; then
    retry 30 kcat -b "$KAFKA" -L -t orders >"$TMP/kcat.metadata"
    grep -E "broker|partition" "$TMP/kcat.metadata" || fail "kcat -L shows no broker or partition"
    kcat -C -b "$KAFKA" -t orders -o beginning -e -q -f '%k:%s\n' >"$TMP/orders.kcat"
    expect_records "kcat consume of the natively produced topic" "$TMP/orders.expected" "$TMP/orders.kcat"
    "$RUNNEL" topic create kcat-demo --partitions 3 --coordinator "$COORD" >/dev/null
    seq 1 300 | awk '{print "k" $1 ":kcat-" $1}' >"$TMP/kcat.expected"
    kcat -P -b "$KAFKA" -t kcat-demo -K : -X acks=all <"$TMP/kcat.expected"
    consume_in_network kcat-demo >"$TMP/kcat.native"
    expect_records "kcat produce, native consume" "$TMP/kcat.expected" "$TMP/kcat.native"
  else
    warn "kcat is not installed: kcat checks skipped (confluent-kafka still runs)"
  fi
  if [ -n "$PY" ]; then
    "$RUNNEL" topic create python-demo --partitions 3 --coordinator "$COORD" >/dev/null
    "$PY" - "$KAFKA" <<'EOF'
import sys, time
from confluent_kafka import Consumer, Producer

broker, topic, n = sys.argv[1], "python-demo", 500
failed = []
p = Producer({"bootstrap.servers": broker, "acks": "all", "enable.idempotence": True})
for i in range(n):
    p.produce(topic, key=f"k{i}", value=f"confluent-{i}",
              on_delivery=lambda err, msg: err and failed.append(err))
left = p.flush(30)
assert left == 0 and not failed, f"produce: {left} undelivered, errors {failed[:3]}"
# A consumer group (the groups nodes coordinate it), committing as it goes.
c = Consumer({"bootstrap.servers": broker, "group.id": "compose-test", "enable.auto.commit": False,
              "auto.offset.reset": "earliest", "session.timeout.ms": 10000})
c.subscribe([topic])
seen, deadline = set(), time.time() + 90
while len(seen) < n and time.time() < deadline:
    m = c.poll(1.0)
    if m is None:
        continue
    assert not m.error(), m.error()
    seen.add(m.value().decode())
    c.commit(message=m, asynchronous=False)
c.close()
assert seen == {f"confluent-{i}" for i in range(n)}, f"consumed {len(seen)} of {n}"
print(f"   confluent-kafka: produced {n} (acks=all, idempotent), consumed all {n} in group compose-test through the edge")
EOF
    step "runnel group describe shows the group's committed offsets, no lag"
    docker run --rm --network "$NETWORK" "$RUNNEL_IMAGE" group describe compose-test \
      --groups groups-1:7700 --coordinator "$IN_NETWORK_COORDINATOR:7400" | tee "$TMP/group.describe"
    grep -q "state Empty" "$TMP/group.describe" || fail "group compose-test is not Empty after its consumer closed"
    awk '$1 == "python-demo" { n++; if ($5 != 0) bad++ } END { exit !(n == 3 && bad == 0) }' "$TMP/group.describe" ||
      fail "expected 3 partitions of python-demo with lag 0 in 'runnel group describe'"
    step "the group's lag is exported to Prometheus by the groups node that owns it"
    # Computed every lag_interval_secs (30 s by default).
    group_lag() {
      local s
      for s in groups-1 groups-2; do
        metrics "$s" 9801 | grep -E '^runnel_group_lag_sum\{group="compose-test"\} 0$' && return 0
      done
      return 1
    }
    retry 60 group_lag
  else
    warn "confluent-kafka is not importable (run tests/setup.sh): confluent-kafka checks skipped"
  fi
fi

step "Prometheus (observability profile) scrapes every role"
# 2 coordinators + 3 storage nodes + ingest + 2 groups nodes + Prometheus
# itself (+ the edge).
expect_jobs="coordinator storage ingest groups prometheus"
expect_targets=9
if [ "$EDGE" = 1 ]; then expect_jobs="$expect_jobs edge"; expect_targets=10; fi
targets() {
  curl -sf "http://127.0.0.1:$P_PROM/api/v1/targets" | python3 -c '
import json, sys
want = set(sys.argv[1].split())
ts = [t for t in json.load(sys.stdin)["data"]["activeTargets"] if t["labels"]["job"] in want]
for t in ts:
    print(t["labels"]["job"], t["labels"]["instance"], t["health"])
jobs = {t["labels"]["job"] for t in ts}
ok = len(ts) == int(sys.argv[2]) and jobs == want and all(t["health"] == "up" for t in ts)
sys.exit(0 if ok else 1)' "$expect_jobs" "$expect_targets"
}
retry 90 targets
curl -sf "http://127.0.0.1:$P_PROM/api/v1/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"] if r["type"] == "alerting"]
assert len(rules) >= 6, rules
print("   Prometheus loaded", len(rules), "alert rules")'

step "controller failover: kill the active coordinator"
active=""
is_active() { grep -q '^runnel_controller_active 1' <<<"$(metrics "$1" 9401)"; }
for s in coordinator-1 coordinator-2; do
  if is_active "$s"; then active="$s"; fi
done
[ -n "$active" ] || fail "no coordinator reports runnel_controller_active 1"
if [ "$active" = coordinator-1 ]; then survivor=coordinator-2; survivor_addr="$COORD2"; dead_addr="$COORD"
else survivor=coordinator-1; survivor_addr="$COORD"; dead_addr="$COORD2"; fi
info "active controller: $active; killing it (docker kill), asking $survivor at $survivor_addr"
docker kill "$(cid "$active")" >/dev/null
t=$SECONDS
retry 60 "$RUNNEL" topic create after-failover --partitions 3 --coordinator "$survivor_addr"
info "topic created through $survivor $((SECONDS - t)) s after the kill (controller lease TTL is 10 s)"
is_active "$survivor" || fail "$survivor did not become the active controller"
IN_NETWORK_COORDINATOR="$survivor"
seq 1 100 | awk '{print "f" $1 ":after-failover-" $1}' >"$TMP/failover.expected"
"$RUNNEL" produce after-failover --key-separator : --ingest "$INGEST" --coordinator "$survivor_addr" <"$TMP/failover.expected"
consume_in_network after-failover >"$TMP/failover.native"
expect_records "produce after the failover" "$TMP/failover.expected" "$TMP/failover.native"

step "the killed coordinator rejoins as a standby"
"${DC[@]}" start "$active"
wait_healthy 60 "$active"
retry 30 "$RUNNEL" topic create via-restarted --coordinator "$dead_addr" >/dev/null
if is_active "$active"; then
  fail "$active claims the controller although $survivor holds it"
fi
info "$active is back: healthy, standing by, forwarding topic creation to $survivor"

step "storage node crash: SIGKILL storage-1, Docker restarts it, the log recovers"
before="$(docker inspect -f '{{.RestartCount}}' "$(cid storage-1)")"
pid="$(docker inspect -f '{{.State.Pid}}' "$(cid storage-1)")"
# A crash, not a stop: SIGKILL to the process from the host (the container's
# PID 1 cannot be killed from inside), so the restart policy (unless-stopped)
# brings it back with no operator step.
[ "$(id -u)" -eq 0 ] || fail "this step needs root (kill -KILL of the container's process)"
kill -KILL "$pid"
deadline=$((SECONDS + 60))
until [ "$(docker inspect -f '{{.RestartCount}}' "$(cid storage-1)")" != "$before" ]; do
  [ "$SECONDS" -ge "$deadline" ] && fail "Docker did not restart storage-1"
  sleep 1
done
wait_healthy 60 storage-1
info "storage-1 restarted by Docker (restart count $(docker inspect -f '{{.RestartCount}}' "$(cid storage-1)"))"
# Wait until the controller lists every partition with a leader again.
no_offline() { ! grep -q OFFLINE <<<"$("$RUNNEL" topic describe orders --coordinator "$COORD")"; }
retry 60 no_offline
seq 1001 1100 | awk '{print "key-" $1 ":value-" $1}' >"$TMP/orders.more"
"$RUNNEL" produce orders --key-separator : --ingest "$INGEST" --coordinator "$COORD" <"$TMP/orders.more"
cat "$TMP/orders.more" >>"$TMP/orders.expected"
consume_in_network orders >"$TMP/orders.after-crash"
expect_records "orders after the storage crash" "$TMP/orders.expected" "$TMP/orders.after-crash"

step "replication: SIGKILL the partition leader of an RF=3 topic while acks=all batches flow"
"$RUNNEL" topic create replicated --partitions 3 --replication-factor 3 \
  --config min.insync.replicas=2 --coordinator "$COORD" >/dev/null
describe_replicated() { "$RUNNEL" topic describe replicated --coordinator "$COORD"; }
all_in_sync() { describe_replicated | awk '/partition/ && /isr=\[[0-9]+, [0-9]+, [0-9]+\]/ {n++} END {exit !(n == 3)}'; }
retry 60 all_in_sync
leader="$(describe_replicated | awk '/partition 0/ {sub("leader=", "", $3); print $3}')"
: >"$TMP/replicated.acked"
(
  # 60 batches of 100 keyed records, one `runnel produce` (acks=all) each;
  # a batch counts as acknowledged when the command succeeds.
  for chunk in $(seq 1 60); do
    seq 1 100 | awk -v c="$chunk" '{print "c" c "-" $1 ":v" c "-" $1}' >"$TMP/chunk"
    if "$RUNNEL" produce replicated --key-separator : --ingest "$INGEST" --coordinator "$COORD" \
      <"$TMP/chunk" >/dev/null 2>&1; then
      cat "$TMP/chunk" >>"$TMP/replicated.acked"
    fi
  done
) &
producer=$!
sleep 3
[ "$(id -u)" -eq 0 ] || fail "this step needs root (kill -KILL of the container's process)"
kill -KILL "$(docker inspect -f '{{.State.Pid}}' "$(cid "storage-$leader")")"
info "killed storage-$leader, the leader of replicated-0, mid-stream"
wait "$producer"
wait_healthy 90 "storage-$leader"
retry 90 all_in_sync
consume_in_network replicated | sort -u >"$TMP/replicated.read"
acked=$(sort -u "$TMP/replicated.acked" | wc -l)
missing=$(comm -23 <(sort -u "$TMP/replicated.acked") "$TMP/replicated.read" | wc -l)
[ "$acked" -ge 1000 ] || fail "only $acked records acknowledged around the kill"
[ "$missing" = 0 ] || fail "$missing of $acked acknowledged records missing after the leader was killed"
info "all $acked acknowledged records present; storage-$leader rejoined every ISR"

step "upgrade one role alone: recreate the ingest container"
"${DC[@]}" up -d --no-deps --force-recreate ingest
wait_healthy 60 ingest
seq 1 50 | awk '{print "u" $1 ":after-upgrade-" $1}' >"$TMP/upgrade.expected"
"$RUNNEL" topic create after-upgrade --partitions 2 --coordinator "$COORD" >/dev/null
"$RUNNEL" produce after-upgrade --key-separator : --ingest "$INGEST" --coordinator "$COORD" <"$TMP/upgrade.expected"
consume_in_network after-upgrade >"$TMP/upgrade.native"
expect_records "produce through the recreated ingest" "$TMP/upgrade.expected" "$TMP/upgrade.native"
if [ "$EDGE" = 1 ]; then
  # The edge keeps an ingest connection; it must carry on after ingest moved.
  if command -v kcat >/dev/null 2>&1; then
    seq 1 20 | awk '{print "e" $1 ":edge-after-upgrade-" $1}' >"$TMP/edge-upgrade.expected"
    kcat -P -b "$KAFKA" -t after-upgrade -K : -X acks=all <"$TMP/edge-upgrade.expected"
    cat "$TMP/edge-upgrade.expected" >>"$TMP/upgrade.expected"
    consume_in_network after-upgrade >"$TMP/upgrade.native"
    expect_records "edge produce after the ingest upgrade" "$TMP/upgrade.expected" "$TMP/upgrade.native"
  fi
fi

step "done"
if [ "$EDGE" = 0 ]; then
  warn "the Kafka edge part was SKIPPED (no 'runnel edge' in this binary); everything else passed"
fi
echo "compose test passed in $((SECONDS - started)) s"
