#!/usr/bin/env bash
# The Kafka edge benchmark (issue 4) in one command:
#
#   ./tests/bench/edge.sh
#
# It drives runnel's Kafka edge with librdkafka's `rdkafka_performance`, runs
# the same workload over runnel's native gRPC API (`runnel perf grpc`) against
# the same `runnel dev` process, and the same rdkafka_performance workload
# against tansu (a Rust Kafka broker) on the same machine, then prints one
# table of absolute figures and same-run ratios and writes summary.json and
# summary.md. Results are ratios against baselines measured in the same run:
# the machines are shared and noisy (see docs/benchmarks.md).
#
# What it needs and builds when missing (into target/bench-tools/, never into
# the source tree):
#   - rdkafka_performance, from the librdkafka source shipped in the
#     `rdkafka-sys` crate (fetched with cargo into a throwaway project), ≈1 min;
#   - tansu (`cargo install tansu --features dynostore`), ≈8 min, niced;
#   - target/release/runnel (`cargo build --release -p runnel`).
# plus python3 (for the summary) and curl (for the edge's metrics).
#
# Knobs (environment):
#   RECORDS=5000000       records per throughput workload (-c)
#   RECORD_BYTES=100      bytes per record value (-s)
#   BATCH_RECORDS=1000    records per batch (batch.num.messages / --batch-records)
#   IN_FLIGHT=5           produce requests in flight (max.in.flight... / --in-flight)
#   LINGER_MS=5           librdkafka linger.ms in the throughput workload
#   PARTITIONS=1          partitions of every topic
#   LAT_RECORDS=5000      records in the latency workload (one per request)
#   LAT_RATE=500          records per second in the latency workload (-r)
#   FLUSH_MODES="always os"  runnel storage flush policies to run
#   SKIP_TANSU=1          leave tansu out
#   BENCH_OUT=DIR         where logs and the summary go (default target/bench/edge-<time>)
#   BENCH_TOOLS=DIR       tool cache (default target/bench-tools)
#   TANSU_VERSION=0.6.0   the tansu release to install
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

RECORDS=${RECORDS:-5000000}
RECORD_BYTES=${RECORD_BYTES:-100}
BATCH_RECORDS=${BATCH_RECORDS:-1000}
IN_FLIGHT=${IN_FLIGHT:-5}
LINGER_MS=${LINGER_MS:-5}
PARTITIONS=${PARTITIONS:-1}
LAT_RECORDS=${LAT_RECORDS:-5000}
LAT_RATE=${LAT_RATE:-500}
FLUSH_MODES=${FLUSH_MODES:-always os}
SKIP_TANSU=${SKIP_TANSU:-0}
TANSU_VERSION=${TANSU_VERSION:-0.6.0}
TOOLS=${BENCH_TOOLS:-$ROOT/target/bench-tools}
OUT=${BENCH_OUT:-$ROOT/target/bench/edge-$(date -u +%Y%m%dT%H%M%SZ)}
RUNNEL=$ROOT/target/release/runnel
RDKAFKA_PERF=$TOOLS/rdkafka_performance
TANSU=$TOOLS/tansu/bin/tansu

mkdir -p "$TOOLS" "$OUT"
log() { printf '== %s\n' "$*" >&2; }
die() { printf 'edge.sh: %s\n' "$*" >&2; exit 1; }

for tool in python3 curl cargo make cc; do
    command -v "$tool" >/dev/null || die "needs $tool on PATH"
done

# Processes this script started and has not stopped yet, stopped on exit.
PIDS=()
forget() {
    local rest=() p
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || rest+=("$p"); done
    PIDS=("${rest[@]}")
}
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "${DATA_ROOT:-}" ]]; then rm -rf "$DATA_ROOT"; fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- tools ----

build_rdkafka_performance() {
    [[ -x "$RDKAFKA_PERF" ]] && return
    log "building rdkafka_performance from the rdkafka-sys crate's librdkafka (≈1 min)"
    local src
    rdkafka_src() {
        find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -mindepth 3 -maxdepth 3 -type d \
            -path '*/rdkafka-sys-*/librdkafka' 2>/dev/null | sort -V | tail -1 || true
    }
    src=$(rdkafka_src)
    if [[ -z "$src" ]]; then
        local proj
        proj=$(mktemp -d)
        mkdir -p "$proj/src"
        cat >"$proj/Cargo.toml" <<'EOF'
[package]
name = "fetch-rdkafka-sys"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
rdkafka-sys = "4"
EOF
        echo 'fn main() {}' >"$proj/src/main.rs"
        (cd "$proj" && cargo fetch -q)
        rm -rf "$proj"
        src=$(rdkafka_src)
        [[ -n "$src" ]] || die "cargo fetch did not bring rdkafka-sys's librdkafka source"
    fi
    local build
    build=$(mktemp -d)
    cp -r "$src" "$build/librdkafka"
    (
        cd "$build/librdkafka"
        chmod +x configure lds-gen.py 2>/dev/null || true
        ./configure --disable-ssl --disable-gssapi --disable-zstd --disable-curl >"$build/configure.log" 2>&1
        nice make -j"$(nproc)" libs >"$build/make.log" 2>&1
        nice make -C examples rdkafka_performance >>"$build/make.log" 2>&1
    ) || { tail -20 "$build/make.log" "$build/configure.log" >&2 2>/dev/null; die "building rdkafka_performance failed (logs in $build)"; }
    cp "$build/librdkafka/examples/rdkafka_performance" "$RDKAFKA_PERF"
    rm -rf "$build"
}

install_tansu() {
    [[ "$SKIP_TANSU" == 1 || -x "$TANSU" ]] && return
    log "installing tansu $TANSU_VERSION with cargo install (≈8 min on 2 cores)"
    nice cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked \
        --root "$TOOLS/tansu" >"$OUT/tansu-install.log" 2>&1 ||
        { tail -20 "$OUT/tansu-install.log" >&2; die "cargo install tansu failed"; }
}

build_runnel() {
    if [[ -x "$RUNNEL" ]] && "$RUNNEL" perf grpc consume --help 2>/dev/null | grep -q -- --serial; then
        return
    fi
    log "building runnel (cargo build --release -p runnel)"
    cargo build --release -p runnel
}

# Tansu builds longest: start it first, in the background, while the rest builds.
TANSU_JOB=
if [[ "$SKIP_TANSU" != 1 && ! -x "$TANSU" ]]; then
    install_tansu &
    TANSU_JOB=$!
fi
build_rdkafka_performance
build_runnel
if [[ -n "$TANSU_JOB" ]]; then
    log "waiting for the tansu install (log: $OUT/tansu-install.log)"
    wait "$TANSU_JOB" || die "installing tansu failed"
fi

# ------------------------------------------------------------ workloads ----

RK_COMMON=(-X "max.in.flight.requests.per.connection=$IN_FLIGHT")

# rdkafka_produce NAME BROKER TOPIC — throughput: -c RECORDS as fast as possible.
rdkafka_produce() {
    local name=$1 broker=$2 topic=$3 part=()
    [[ "$PARTITIONS" == 1 ]] && part=(-p 0)
    log "$name: rdkafka_performance -P ($RECORDS × $RECORD_BYTES B, acks=all)"
    timeout 600 "$RDKAFKA_PERF" -P -t "$topic" "${part[@]}" -b "$broker" -s "$RECORD_BYTES" \
        -c "$RECORDS" -a -1 -X "linger.ms=$LINGER_MS" -X "batch.num.messages=$BATCH_RECORDS" \
        "${RK_COMMON[@]}" >"$OUT/$name.log" 2>&1 || die "$name failed; see $OUT/$name.log"
}

# rdkafka_consume NAME BROKER TOPIC — read RECORDS from the beginning.
rdkafka_consume() {
    local name=$1 broker=$2 topic=$3 part=() p
    for ((p = 0; p < PARTITIONS; p++)); do part+=(-p "$p"); done
    log "$name: rdkafka_performance -C -o beginning ($RECORDS records)"
    timeout 600 "$RDKAFKA_PERF" -C -t "$topic" "${part[@]}" -b "$broker" -o beginning \
        -c "$RECORDS" >"$OUT/$name.log" 2>&1 || die "$name failed; see $OUT/$name.log"
}

# rdkafka_latency NAME BROKER TOPIC — one record per request at LAT_RATE/s
# (linger.ms=0) with a consumer at the end of the partition: per-record
# acknowledgement latency (-l on the producer) and end-to-end latency (-l on
# the consumer), both written one value (µs) a line.
rdkafka_latency() {
    local name=$1 broker=$2 topic=$3
    log "$name: rdkafka_performance -P -l -r $LAT_RATE with -C -l ($LAT_RECORDS records)"
    timeout 300 "$RDKAFKA_PERF" -C -t "$topic" -p 0 -b "$broker" -o end -l -A "$OUT/$name.e2e.us" \
        -c "$LAT_RECORDS" >"$OUT/$name.consumer.log" 2>&1 &
    local consumer=$!
    PIDS+=("$consumer")
    sleep 3 # the consumer has fetched the end offset and is long-polling
    timeout 300 "$RDKAFKA_PERF" -P -t "$topic" -p 0 -b "$broker" -s "$RECORD_BYTES" -a -1 \
        -c "$LAT_RECORDS" -r "$LAT_RATE" -l -A "$OUT/$name.ack.us" -X linger.ms=0 \
        "${RK_COMMON[@]}" >"$OUT/$name.log" 2>&1 || die "$name failed; see $OUT/$name.log"
    local status=0
    wait "$consumer" || status=$?
    forget "$consumer"
    [[ $status == 0 ]] || die "$name consumer failed; see $OUT/$name.consumer.log"
}

# scrape FILE: the server's CPU time so far and, for runnel, the per-stage
# counters of its /metrics that the summary turns into per-request means for
# a phase (differences of two scrapes).
scrape() {
    local metrics=""
    [[ -n "${METRICS:-}" ]] && metrics=$(curl -sf "http://$METRICS/metrics")
    SERVER_PID=$SERVER_PID CLK_TCK=$(getconf CLK_TCK) python3 -c '
import json, os, re, sys
text = sys.stdin.read()
def total(pattern):
    return sum(float(m) for m in re.findall(r"^" + pattern + r" ([0-9.e+-]+)$", text, re.M))
stages = {
    "edge": r"runnel_edge_request_duration_seconds_%s\{api=\"Produce\"\}",
    "ingest": r"runnel_request_duration_seconds_%s\{service=\"ingest\",method=\"Produce\"\}",
    "append": r"runnel_request_duration_seconds_%s\{service=\"storage\",method=\"Append\"\}",
    "fsync": r"runnel_log_fsync_seconds_%s",
    "edge_fetch": r"runnel_edge_request_duration_seconds_%s\{api=\"Fetch\"\}",
    "storage_fetch": r"runnel_request_duration_seconds_%s\{service=\"storage\",method=\"Fetch\"\}",
}
out = {k: {"sum": total(v % "sum"), "count": total(v % "count"),
           "fast": total((v % "bucket").replace("\\}", ",le=\"0.25\"\\}").replace("_bucket,", "_bucket\\{"))}
       for k, v in stages.items()}
out["edge_produce_bytes"] = total(r"runnel_edge_produce_bytes_total")
with open("/proc/%s/stat" % os.environ["SERVER_PID"]) as f:
    fields = f.read().rsplit(")", 1)[1].split()
out["server_cpu_s"] = (int(fields[11]) + int(fields[12])) / int(os.environ["CLK_TCK"])
print(json.dumps(out))' <<<"$metrics" >"$1"
}

# phase NAME COMMAND...: runs one workload between two scrapes, timing the
# client's CPU (bash's `time` counts the children it waits for).
phase() {
    local name=$1
    shift
    scrape "$OUT/$name.before.json"
    local TIMEFORMAT='%3R %3U %3S'
    { time "$@" 2>&3; } 3>&2 2>"$OUT/$name.client-time"
    scrape "$OUT/$name.after.json"
}

grpc() {
    local name=$1 workload=$2
    shift 2
    log "$name: runnel perf grpc $workload"
    timeout 600 "$RUNNEL" perf grpc "$workload" --coordinator "$COORDINATOR" --ingest "$INGEST" \
        --partitions "$PARTITIONS" --record-bytes "$RECORD_BYTES" --json "$@" >"$OUT/$name.log" 2>&1 ||
        die "$name failed; see $OUT/$name.log"
}

topic() {
    "$RUNNEL" topic create "$1" --partitions "$PARTITIONS" --coordinator "$COORDINATOR" >/dev/null
}

mkdir -p "$ROOT/target/bench"
DATA_ROOT=$(mktemp -d "$ROOT/target/bench/data.XXXXXX")

run_runnel() {
    local flush=$1 tag="runnel-$1"
    local data="$DATA_ROOT/$tag"
    METRICS=127.0.0.1:$(free_port)
    log "starting runnel dev --flush $flush (data in $data)"
    "$RUNNEL" dev --data-dir "$data" --coordinator-port 0 --storage-port 0 --ingest-port 0 \
        --kafka-port 0 --metrics-listen "$METRICS" --flush "$flush" >"$OUT/$tag.dev.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    SERVER_PID=$pid
    for _ in $(seq 1 300); do
        grep -q '^  Kafka (edge)' "$OUT/$tag.dev.log" && break
        kill -0 "$pid" 2>/dev/null || die "runnel dev stopped; see $OUT/$tag.dev.log"
        sleep 0.1
    done
    addr() { sed -n "s/^  $1 *//p" "$OUT/$tag.dev.log" | head -1; }
    COORDINATOR=$(addr 'coordinator gRPC')
    INGEST=$(addr 'ingest gRPC')
    KAFKA=$(addr 'Kafka (edge)')
    [[ -n "$KAFKA" && -n "$INGEST" && -n "$COORDINATOR" ]] || die "runnel dev did not start; see $OUT/$tag.dev.log"

    topic edge-tp
    topic edge-lat
    # Produce: through the edge, then the same over gRPC.
    phase "$tag.edge.produce" rdkafka_produce "$tag.edge.produce" "$KAFKA" edge-tp
    phase "$tag.grpc.produce" grpc "$tag.grpc.produce" produce --topic grpc-tp --records "$RECORDS" \
        --batch-records "$BATCH_RECORDS" --in-flight "$IN_FLIGHT"
    # One call in flight carrying IN_FLIGHT batches' worth of records: what
    # the edge would do if it merged the requests queued on a connection into
    # one ingest call (the fix proposed in docs/benchmarks.md).
    phase "$tag.grpc1.produce" grpc "$tag.grpc1.produce" produce --topic grpc1-tp --records "$RECORDS" \
        --batch-records "$((BATCH_RECORDS * IN_FLIGHT))" --in-flight 1
    # Consume each topic back from the beginning.
    phase "$tag.edge.consume" rdkafka_consume "$tag.edge.consume" "$KAFKA" edge-tp
    phase "$tag.grpc.consume" grpc "$tag.grpc.consume" consume --topic grpc-tp --records "$RECORDS"
    # The same decoding each response before the next fetch, as librdkafka's
    # broker thread does.
    phase "$tag.grpcs.consume" grpc "$tag.grpcs.consume" consume --topic grpc-tp --records "$RECORDS" --serial
    # Latency at a fixed rate, one record per request.
    phase "$tag.edge.latency" rdkafka_latency "$tag.edge.latency" "$KAFKA" edge-lat
    phase "$tag.grpc.latency" grpc "$tag.grpc.latency" latency --topic grpc-lat --records "$LAT_RECORDS" --rate "$LAT_RATE"

    stop "$pid"
    rm -rf "$data"
}

run_tansu() {
    local port
    port=$(free_port)
    local broker=127.0.0.1:$port
    log "starting tansu broker (storage memory://tansu/) on $broker"
    "$TANSU" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" \
        --storage-engine memory://tansu/ >"$OUT/tansu.broker.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    SERVER_PID=$pid
    METRICS=
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || die "tansu stopped; see $OUT/tansu.broker.log"
        sleep 0.1
    done
    for t in tansu-tp tansu-lat; do
        "$TANSU" topic create "$t" --partitions "$PARTITIONS" --broker "tcp://$broker" \
            >>"$OUT/tansu.topics.log" 2>&1 || die "creating tansu topic $t failed; see $OUT/tansu.topics.log"
    done
    phase tansu.produce rdkafka_produce tansu.produce "$broker" tansu-tp
    phase tansu.consume rdkafka_consume tansu.consume "$broker" tansu-tp
    phase tansu.latency rdkafka_latency tansu.latency "$broker" tansu-lat
    stop "$pid"
}

log "results in $OUT"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -srm), $(nproc) cores"
    echo "runnel: $("$RUNNEL" --version), binary built $(date -u -r "$RUNNEL" +%FT%TZ)"
    echo "rdkafka_performance: librdkafka $("$RDKAFKA_PERF" -h 2>&1 | sed -n 's/^librdkafka version \([^ ]*\).*/\1/p')"
    [[ "$SKIP_TANSU" == 1 ]] || echo "tansu: $("$TANSU" --version 2>/dev/null || echo "$TANSU_VERSION")"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/environment.txt"

for flush in $FLUSH_MODES; do
    run_runnel "$flush"
done
[[ "$SKIP_TANSU" == 1 ]] || run_tansu
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/environment.txt"

# ------------------------------------------------------------- summary ----

RECORDS=$RECORDS RECORD_BYTES=$RECORD_BYTES BATCH_RECORDS=$BATCH_RECORDS IN_FLIGHT=$IN_FLIGHT \
    LINGER_MS=$LINGER_MS PARTITIONS=$PARTITIONS LAT_RECORDS=$LAT_RECORDS LAT_RATE=$LAT_RATE \
    FLUSH_MODES=$FLUSH_MODES SKIP_TANSU=$SKIP_TANSU python3 - "$OUT" <<'PY'
import json, os, re, sys

out = sys.argv[1]
env = os.environ
flushes = env["FLUSH_MODES"].split()
tansu = env["SKIP_TANSU"] != "1"


def read(name):
    with open(os.path.join(out, name)) as f:
        return f.read()


def rdkafka(name):
    """Records/s and MB/s from rdkafka_performance's final summary line."""
    text = read(name + ".log")
    m = re.findall(r"% (\d+) messages produced \((\d+) bytes\), (\d+) delivered .* in (\d+)ms: (\d+) msgs/s and ([0-9.]+) MB/s", text)
    if m:
        msgs, _, delivered, ms, rate, mbs = m[-1]
        if int(delivered) != int(msgs):
            sys.exit(f"{name}: {delivered} of {msgs} delivered")
        return {"records": int(delivered), "seconds": int(ms) / 1e3, "records_per_s": float(rate), "mb_per_s": float(mbs)}
    m = re.findall(r"% (\d+) messages \((\d+) bytes\) consumed in (\d+)ms: (\d+) msgs/s \(([0-9.]+) MB/s\)", text)
    if m:
        msgs, _, ms, rate, mbs = m[-1]
        return {"records": int(msgs), "seconds": int(ms) / 1e3, "records_per_s": float(rate), "mb_per_s": float(mbs)}
    sys.exit(f"{name}: no summary line in {name}.log")


def percentiles(values):
    values = sorted(values)
    if not values:
        return None
    at = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return {"count": len(values), "mean_us": sum(values) / len(values), "p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999), "max_us": values[-1]}


def latency_file(name):
    return percentiles([int(x) for x in read(name).split()])


def stages(name):
    """Per-request means (ms) of each stage runnel timed during a phase."""
    a, b = json.loads(read(name + ".before.json")), json.loads(read(name + ".after.json"))
    out = {}
    for k in ["edge", "ingest", "append", "fsync", "edge_fetch", "storage_fetch"]:
        n = b[k]["count"] - a[k]["count"]
        total = b[k]["sum"] - a[k]["sum"]
        if k.endswith("fetch"):
            # Long polls that found nothing at the end of a topic (over
            # 250 ms: they wait the 500 ms fetch.wait.max.ms) are left out.
            idle = n - (b[k]["fast"] - a[k]["fast"])
            n, total = n - idle, max(0.0, total - 0.5 * idle)
        out[k] = {"count": n, "mean_ms": total * 1e3 / n if n else None}
    n = out["edge"]["count"]
    out["edge_bytes_per_request"] = (b["edge_produce_bytes"] - a["edge_produce_bytes"]) / n if n else None
    return out


def cpu(name, records):
    """CPU the server and the client used over a phase, per record (µs) and
    as cores busy on average."""
    a, b = json.loads(read(name + ".before.json")), json.loads(read(name + ".after.json"))
    wall, user, system = (float(x) for x in read(name + ".client-time").split()[-3:])
    server = b["server_cpu_s"] - a["server_cpu_s"]
    return {"wall_s": wall, "server_cpu_s": server, "client_cpu_s": user + system,
            "server_us_per_record": server * 1e6 / records, "client_us_per_record": (user + system) * 1e6 / records,
            "server_cores": server / wall, "client_cores": (user + system) / wall}


def grpc(name):
    lines = [l for l in read(name + ".log").splitlines() if l.startswith("{")]
    return json.loads(lines[-1])


results = {"parameters": {k: env[k] for k in ["RECORDS", "RECORD_BYTES", "BATCH_RECORDS", "IN_FLIGHT", "LINGER_MS", "PARTITIONS", "LAT_RECORDS", "LAT_RATE"]},
           "environment": read("environment.txt").strip().splitlines(), "systems": {}}
for flush in flushes:
    tag = f"runnel-{flush}"
    edge = {"produce": rdkafka(f"{tag}.edge.produce"), "consume": rdkafka(f"{tag}.edge.consume"),
            "latency": {"ack": latency_file(f"{tag}.edge.latency.ack.us"), "end_to_end": latency_file(f"{tag}.edge.latency.e2e.us")}}
    edge["produce"]["stages"] = stages(f"{tag}.edge.produce")
    edge["produce"]["cpu"] = cpu(f"{tag}.edge.produce", edge["produce"]["records"])
    edge["consume"]["cpu"] = cpu(f"{tag}.edge.consume", edge["consume"]["records"])
    edge["latency"]["stages"] = stages(f"{tag}.edge.latency")
    g = {"produce": grpc(f"{tag}.grpc.produce"), "produce_coalesced": grpc(f"{tag}.grpc1.produce"), "consume": grpc(f"{tag}.grpc.consume")}
    gl = grpc(f"{tag}.grpc.latency")
    g["latency"] = {"ack": gl["latency"], "end_to_end": gl["end_to_end"], "stages": stages(f"{tag}.grpc.latency")}
    g["produce"]["stages"] = stages(f"{tag}.grpc.produce")
    g["produce_coalesced"]["stages"] = stages(f"{tag}.grpc1.produce")
    g["consume_serial"] = grpc(f"{tag}.grpcs.consume")
    edge["consume"]["stages"] = stages(f"{tag}.edge.consume")
    g["consume"]["stages"] = stages(f"{tag}.grpc.consume")
    g["consume_serial"]["stages"] = stages(f"{tag}.grpcs.consume")
    for k, n in [("produce", "grpc.produce"), ("produce_coalesced", "grpc1.produce"), ("consume", "grpc.consume"), ("consume_serial", "grpcs.consume")]:
        g[k]["cpu"] = cpu(f"{tag}.{n}", g[k]["records"])
    results["systems"][f"{tag} edge"] = edge
    results["systems"][f"{tag} grpc"] = g
if tansu:
    results["systems"]["tansu memory"] = {"produce": rdkafka("tansu.produce"), "consume": rdkafka("tansu.consume"),
                                          "latency": {"ack": latency_file("tansu.latency.ack.us"), "end_to_end": latency_file("tansu.latency.e2e.us")}}
    for k in ["produce", "consume"]:
        t = results["systems"]["tansu memory"][k]
        t["cpu"] = cpu(f"tansu.{k}", t["records"])

S = results["systems"]
ratios = {}
for flush in flushes:
    e, g = S[f"runnel-{flush} edge"], S[f"runnel-{flush} grpc"]
    r = ratios[f"runnel-{flush}"] = {
        "edge/grpc produce throughput": e["produce"]["records_per_s"] / g["produce"]["records_per_s"],
        "edge/grpc(coalesced) produce throughput": e["produce"]["records_per_s"] / g["produce_coalesced"]["records_per_s"],
        "edge/grpc consume throughput": e["consume"]["records_per_s"] / g["consume"]["records_per_s"],
        "edge/grpc(serial) consume throughput": e["consume"]["records_per_s"] / g["consume_serial"]["records_per_s"],
        "edge added ack p50 ms": (e["latency"]["ack"]["p50_us"] - g["latency"]["ack"]["p50_us"]) / 1e3,
        "edge added ack p99 ms": (e["latency"]["ack"]["p99_us"] - g["latency"]["ack"]["p99_us"]) / 1e3,
        "edge added end-to-end p50 ms": (e["latency"]["end_to_end"]["p50_us"] - g["latency"]["end_to_end"]["p50_us"]) / 1e3,
    }
    if tansu:
        t = S["tansu memory"]
        r["runnel/tansu produce throughput"] = e["produce"]["records_per_s"] / t["produce"]["records_per_s"]
        r["runnel/tansu consume throughput"] = e["consume"]["records_per_s"] / t["consume"]["records_per_s"]
        r["runnel/tansu ack p99"] = e["latency"]["ack"]["p99_us"] / t["latency"]["ack"]["p99_us"]
        r["runnel/tansu end-to-end p99"] = e["latency"]["end_to_end"]["p99_us"] / t["latency"]["end_to_end"]["p99_us"]
results["ratios"] = ratios

targets = {}
for flush in flushes:
    r = ratios[f"runnel-{flush}"]
    t = targets[f"runnel-{flush}"] = {
        "edge produce ≥ 0.9× gRPC": r["edge/grpc produce throughput"] >= 0.9,
        "edge consume ≥ 0.9× gRPC": r["edge/grpc consume throughput"] >= 0.9,
        "edge adds ≤ 0.3 ms at p50 (ack)": r["edge added ack p50 ms"] <= 0.3,
    }
    if tansu:
        t["produce ≥ tansu"] = r["runnel/tansu produce throughput"] >= 1.0
        t["consume ≥ tansu"] = r["runnel/tansu consume throughput"] >= 1.0
        t["ack p99 ≤ 1.5× tansu"] = r["runnel/tansu ack p99"] <= 1.5
        t["end-to-end p99 ≤ 1.5× tansu"] = r["runnel/tansu end-to-end p99"] <= 1.5
results["targets"] = targets

with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(results, f, indent=2)

p = results["parameters"]
md = []
md.append(f"Workload: {p['RECORD_BYTES']} B records, acks=all, {p['PARTITIONS']} partition(s); throughput: "
          f"{p['RECORDS']} records, {p['BATCH_RECORDS']} records/batch, {p['IN_FLIGHT']} requests in flight, linger.ms={p['LINGER_MS']}; "
          f"latency: {p['LAT_RECORDS']} records at {p['LAT_RATE']}/s, one per request (linger.ms=0).")
md.append("")
md.append("| system | produce rec/s | produce MB/s | consume rec/s | consume MB/s | ack p50 ms | ack p99 ms | e2e p50 ms | e2e p99 ms |")
md.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
ms = lambda us: f"{us / 1e3:.2f}"
for name, s in S.items():
    lat = s["latency"]
    md.append(f"| {name} | {s['produce']['records_per_s']:,.0f} | {s['produce']['mb_per_s']:.1f} | {s['consume']['records_per_s']:,.0f} | {s['consume']['mb_per_s']:.1f} | "
              f"{ms(lat['ack']['p50_us'])} | {ms(lat['ack']['p99_us'])} | {ms(lat['end_to_end']['p50_us'])} | {ms(lat['end_to_end']['p99_us'])} |")
    if "produce_coalesced" in s:
        q, c = s["produce_coalesced"], s["consume_serial"]
        md.append(f"| {name} (produce: 1 call of {int(p['IN_FLIGHT']) * int(p['BATCH_RECORDS'])} records in flight; consume: serial) | {q['records_per_s']:,.0f} | {q['mb_per_s']:.1f} | {c['records_per_s']:,.0f} | {c['mb_per_s']:.1f} | | | | |")
md.append("")
md.append("| ratio | " + " | ".join(ratios) + " |")
md.append("|---|" + "---:|" * len(ratios))
for key in next(iter(ratios.values())):
    md.append(f"| {key} | " + " | ".join(f"{r[key]:.3g}" for r in ratios.values()) + " |")
md.append("")
md.append("| target | " + " | ".join(targets) + " |")
md.append("|---|" + "---|" * len(targets))
for key in next(iter(targets.values())):
    md.append(f"| {key} | " + " | ".join("met" if t[key] else "**missed**" for t in targets.values()) + " |")
md.append("")
md.append("Where a Produce request's time goes (means per request, ms; from runnel's /metrics over each phase):")
md.append("")
md.append("| phase | requests | kB/request | edge | ingest | storage Append | fsync (count) |")
md.append("|---|---:|---:|---:|---:|---:|---:|")
f3 = lambda v: "" if v is None else f"{v:.3f}"
for flush in flushes:
    for label, st in [(f"runnel-{flush} edge produce", S[f"runnel-{flush} edge"]["produce"]["stages"]),
                      (f"runnel-{flush} grpc produce", S[f"runnel-{flush} grpc"]["produce"]["stages"]),
                      (f"runnel-{flush} grpc produce, coalesced", S[f"runnel-{flush} grpc"]["produce_coalesced"]["stages"]),
                      (f"runnel-{flush} edge latency", S[f"runnel-{flush} edge"]["latency"]["stages"]),
                      (f"runnel-{flush} grpc latency", S[f"runnel-{flush} grpc"]["latency"]["stages"])]:
        reqs = st["edge"]["count"] or st["ingest"]["count"]
        kb = st["edge_bytes_per_request"]
        md.append(f"| {label} | {reqs:.0f} | {'' if kb is None else f'{kb / 1e3:.1f}'} | {f3(st['edge']['mean_ms'])} | {f3(st['ingest']['mean_ms'])} | "
                  f"{f3(st['append']['mean_ms'])} | {f3(st['fsync']['mean_ms'])} ({st['fsync']['count']:.0f}) |")
md.append("")
md.append("Fetch requests during the consume phases (means per request, ms):")
md.append("")
md.append("| phase | edge Fetch (count) | storage Fetch (count) |")
md.append("|---|---:|---:|")
for flush in flushes:
    for label, st in [(f"runnel-{flush} edge consume", S[f"runnel-{flush} edge"]["consume"]["stages"]),
                      (f"runnel-{flush} grpc consume", S[f"runnel-{flush} grpc"]["consume"]["stages"]),
                      (f"runnel-{flush} grpc consume, serial", S[f"runnel-{flush} grpc"]["consume_serial"]["stages"])]:
        md.append(f"| {label} | {f3(st['edge_fetch']['mean_ms'])} ({st['edge_fetch']['count']:.0f}) | {f3(st['storage_fetch']['mean_ms'])} ({st['storage_fetch']['count']:.0f}) |")
md.append("")
md.append("CPU over each throughput phase: µs per record and cores busy on average (server = the runnel dev or tansu process; client = rdkafka_performance or runnel perf grpc):")
md.append("")
md.append("| phase | server µs/rec | client µs/rec | server cores | client cores |")
md.append("|---|---:|---:|---:|---:|")
for name, s in S.items():
    for k in ["produce", "produce_coalesced", "consume", "consume_serial"]:
        c = s.get(k, {}).get("cpu")
        if c:
            label = {"produce_coalesced": "produce coalesced", "consume_serial": "consume serial"}.get(k, k)
            md.append(f"| {name} {label} | {c['server_us_per_record']:.2f} | {c['client_us_per_record']:.2f} | {c['server_cores']:.2f} | {c['client_cores']:.2f} |")
text = "\n".join(md) + "\n"
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(text)
print(text)
PY
log "summary: $OUT/summary.md and $OUT/summary.json"
