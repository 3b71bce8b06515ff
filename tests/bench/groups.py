"""The consumer-group benchmark, driven with confluent-kafka (librdkafka).

Started by tests/bench/groups.sh against a fresh `runnel dev`; run by hand
against any edge with

    python tests/bench/groups.py --bootstrap HOST:PORT [--metrics HOST:PORT] --out DIR

It measures, in one run and against baselines taken in the same run:

1. offset commits: consumers committing one offset at a time in a loop,
   synchronously (1 consumer; 8 consumers of one group, i.e. one
   `__consumer_offsets` shard; 8 consumers of 8 groups) and asynchronously;
   baseline: one tiny record produced with acks=all and flushed, one at a
   time (one durable append round trip), 1 and 8 producers;
2. rebalance time of a 10-member group on a 20-partition topic
   (cooperative-sticky, and eager with the range assignor): all 10 assigned,
   an 11th joins, one leaves; median of --rebalance-runs runs, for each
   heartbeat.interval.ms in --heartbeat-ms (members learn of a rebalance
   from their next heartbeat);
3. consume throughput through a group (subscribe, auto commit) against
   direct partition consumption (assign, no group) of the same records;
   three members of one group against three assign()ed consumers; with
   fetch.queue.backoff.ms=10 and with librdkafka's default (1000).

No figure here is checked against a limit: it reports, it does not assert.
Writes DIR/summary.json and DIR/summary.md and prints the tables.
"""

import argparse
import json
import logging
import os
import re
import statistics
import sys
import threading
import time
import urllib.request
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

now = time.perf_counter


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


# ----------------------------------------------------------------- metrics ----

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([0-9.eE+-]+|NaN|[+-]Inf)$")


class Metrics:
    """Differences of runnel's /metrics between two scrapes."""

    def __init__(self, address):
        self.address = address

    def scrape(self):
        if not self.address:
            return {}
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            m = METRIC_LINE.match(line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return out

    @staticmethod
    def delta(before, after):
        if not after:
            return None

        def total(name, labels=""):
            """Sum over series of `name` whose labels contain `labels`."""
            return sum(v - before.get(k, 0.0) for k, v in after.items()
                       if k.split("{")[0] == name and labels in k)

        def mean_ms(name, labels=""):
            n = total(name + "_count", labels)
            return {"count": n, "mean_ms": total(name + "_sum", labels) * 1e3 / n if n else None}

        return {
            "offset_commits": total("runnel_groups_offset_commits_total"),
            "rebalances": total("runnel_groups_rebalances_total"),
            "edge_offset_commit": mean_ms("runnel_edge_request_duration_seconds", 'api="OffsetCommit"'),
            "edge_produce": mean_ms("runnel_edge_request_duration_seconds", 'api="Produce"'),
            "ingest_produce": mean_ms("runnel_request_duration_seconds", 'service="ingest",method="Produce"'),
            "storage_append": mean_ms("runnel_request_duration_seconds", 'service="storage",method="Append"'),
            "fsync": mean_ms("runnel_log_fsync_seconds"),
        }


# ----------------------------------------------------------------- helpers ----


class Bench:
    def __init__(self, args):
        self.args = args
        self.bootstrap = args.bootstrap
        self.metrics = Metrics(args.metrics)
        self.run_id = uuid.uuid4().hex[:8]
        rdlog = logging.getLogger("librdkafka")
        rdlog.setLevel(logging.INFO)
        rdlog.propagate = False
        rdlog.addHandler(logging.FileHandler(os.path.join(args.out, "librdkafka.log")))
        self.rdlog = rdlog
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": rdlog})

    def name(self, prefix):
        return f"{prefix}-{self.run_id}"

    def conf(self, **extra):
        c = {"bootstrap.servers": self.bootstrap, "logger": self.rdlog}
        c.update({k if k == "on_commit" else k.replace("_", "."): v for k, v in extra.items()})
        return c

    def topic(self, prefix, partitions):
        name = self.name(prefix)
        fs = self.admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                      operation_timeout=10)
        fs[name].result(timeout=30)
        # Wait until the edge's metadata shows every partition.
        deadline = now() + 30
        while now() < deadline:
            md = self.admin.list_topics(name, timeout=5)
            t = md.topics.get(name)
            if t is not None and t.error is None and len(t.partitions) == partitions:
                return name
            time.sleep(0.1)
        raise RuntimeError(f"topic {name} did not appear with {partitions} partitions")

    def phase(self, fn, *a, **kw):
        """Runs fn between two /metrics scrapes; adds the differences."""
        before = self.metrics.scrape()
        result = fn(*a, **kw)
        result["server"] = Metrics.delta(before, self.metrics.scrape())
        return result


# ---------------------------------------------------------- 1. commits ----


def run_threads(workers):
    """Starts one thread per (target, args), lets them all start the clock
    together (a barrier after their warm-up), waits for all; re-raises the
    first failure."""
    barrier = threading.Barrier(len(workers) + 1)
    errors = []

    def wrap(fn, args):
        try:
            fn(barrier, *args)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=wrap, args=(fn, args), daemon=True) for fn, args in workers]
    for t in threads:
        t.start()
    try:
        barrier.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def sync_commits(bench, topic, groups, seconds):
    """len(groups) consumers, consumer i in groups[i] committing partition i
    synchronously, one offset per commit, for `seconds`."""
    lat = [[] for _ in groups]
    window = {}

    def worker(barrier, i, group):
        c = Consumer(bench.conf(group_id=group, enable_auto_commit=False))
        try:
            # Warm-up: finds the coordinator and opens its connection.
            c.commit(offsets=[TopicPartition(topic, i, 0)], asynchronous=False)
            barrier.wait()
            start = now()
            window.setdefault("start", start)
            end, offset, mine = start + seconds, 1, lat[i]
            while True:
                t = now()
                if t >= end:
                    break
                res = c.commit(offsets=[TopicPartition(topic, i, offset)], asynchronous=False)
                mine.append(now() - t)
                if res and res[0].error:
                    raise KafkaException(res[0].error)
                offset += 1
        finally:
            c.close()

    def run():
        run_threads([(worker, (i, g)) for i, g in enumerate(groups)])
        all_lat = [x for l in lat for x in l]
        return {"clients": len(groups), "groups": len(set(groups)), "commits": len(all_lat),
                "seconds": seconds, "per_s": len(all_lat) / seconds,
                "p50_ms": pct(all_lat, 0.5) * 1e3, "p99_ms": pct(all_lat, 0.99) * 1e3}

    return bench.phase(run)


def async_commits(bench, topic, group, seconds, in_flight):
    """One consumer issuing asynchronous commits (at most `in_flight`
    unanswered) for `seconds`; counts the answered ones."""
    state = {"done": 0, "errors": 0}

    def on_commit(err, partitions):
        state["done"] += 1
        if err is not None or any(p.error for p in partitions or []):
            state["errors"] += 1

    def run():
        c = Consumer(bench.conf(group_id=group, enable_auto_commit=False, on_commit=on_commit))
        try:
            c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
            state["done"] = 0
            issued, start = 0, now()
            end = start + seconds
            while now() < end:
                if issued - state["done"] < in_flight:
                    issued += 1
                    c.commit(offsets=[TopicPartition(topic, 0, issued)], asynchronous=True)
                    c.poll(0)
                else:
                    c.poll(0.001)
            done = state["done"]
            # Let the rest finish so the next phase starts quiet.
            deadline = now() + 30
            while state["done"] < issued and now() < deadline:
                c.poll(0.01)
        finally:
            c.close()
        if state["errors"]:
            raise RuntimeError(f"{state['errors']} asynchronous commits failed")
        return {"clients": 1, "groups": 1, "in_flight": in_flight, "commits": done, "seconds": seconds,
                "per_s": done / seconds}

    return bench.phase(run)


def durable_produces(bench, topic, producers, count, max_seconds):
    """`producers` producers, each sending tiny records one at a time with
    acks=all and waiting for each (produce + flush), `count` records in all
    or `max_seconds`, whichever comes first."""
    lat = [[] for _ in range(producers)]
    share = -(-count // producers)

    def worker(barrier, i):
        p = Producer(bench.conf(acks="all", linger_ms=0, enable_idempotence=False))
        try:
            p.produce(topic, b"w", partition=0)
            if p.flush(30) != 0:
                raise RuntimeError("warm-up produce not acknowledged")
            failed = []
            cb = lambda err, _msg: failed.append(err) if err else None  # noqa: E731
            barrier.wait()
            end, mine = now() + max_seconds, lat[i]
            for _ in range(share):
                t = now()
                if t >= end:
                    break
                p.produce(topic, b"x" * 16, partition=0, on_delivery=cb)
                if p.flush(30) != 0:
                    raise RuntimeError("produce not acknowledged within 30 s")
                mine.append(now() - t)
                if failed:
                    raise KafkaException(failed[0])
        finally:
            p.flush(10)

    def run():
        start = now()
        run_threads([(worker, (i,)) for i in range(producers)])
        wall = now() - start
        all_lat = [x for l in lat for x in l]
        # Rate over the time the producers actually ran (the slowest one).
        seconds = max(sum(l) for l in lat)
        return {"clients": producers, "records": len(all_lat), "seconds": seconds, "wall_s": wall,
                "per_s": len(all_lat) / seconds,
                "p50_ms": pct(all_lat, 0.5) * 1e3, "p99_ms": pct(all_lat, 0.99) * 1e3}

    return bench.phase(run)


def commits(bench, args):
    topic = bench.topic("commits", 8)
    base = bench.topic("durable", 1)
    secs = args.commit_seconds
    out = {}
    log(f"commits: 1 consumer, synchronous, {secs} s")
    out["sync_1"] = sync_commits(bench, topic, [bench.name("c1")], secs)
    log(f"baseline: 1 producer, acks=all, one record per flush ({out['sync_1']['commits']} records or {2 * secs} s)")
    out["produce_1"] = durable_produces(bench, base, 1, out["sync_1"]["commits"], 2 * secs)
    log(f"commits: 8 consumers of one group (one shard), synchronous, {secs} s")
    out["sync_8_one_group"] = sync_commits(bench, topic, [bench.name("c8")] * 8, secs)
    log(f"commits: 8 consumers of 8 groups, synchronous, {secs} s")
    out["sync_8_groups"] = sync_commits(bench, topic, [bench.name(f"c8g{i}") for i in range(8)], secs)
    log(f"baseline: 8 producers to one partition, acks=all, one record per flush each ({out['sync_8_one_group']['commits']} records or {2 * secs} s)")
    out["produce_8"] = durable_produces(bench, base, 8, out["sync_8_one_group"]["commits"], 2 * secs)
    log(f"commits: 1 consumer, asynchronous (≤{args.async_in_flight} unanswered), {secs} s")
    out["async_1"] = async_commits(bench, topic, bench.name("ca"), secs, args.async_in_flight)
    return out


# -------------------------------------------------------- 2. rebalance ----


class Member(threading.Thread):
    """One group member: its own Consumer, polled by its own thread; keeps
    the partitions it currently owns, as its rebalance callbacks say."""

    def __init__(self, bench, group, topic, strategy, heartbeat_ms):
        super().__init__(daemon=True)
        self.topic, self.cooperative = topic, strategy == "cooperative-sticky"
        self.consumer = Consumer(bench.conf(
            group_id=group, partition_assignment_strategy=strategy, enable_auto_commit=False,
            auto_offset_reset="latest", heartbeat_interval_ms=heartbeat_ms))
        self.lock = threading.Lock()
        self.owned = set()
        self.go, self.leave, self.stop = threading.Event(), threading.Event(), threading.Event()
        self.close_s = None
        self.error = None

    def on_assign(self, _c, parts):
        with self.lock:
            ps = {p.partition for p in parts}
            self.owned = self.owned | ps if self.cooperative else ps

    def on_revoke(self, _c, parts):
        with self.lock:
            self.owned = self.owned - {p.partition for p in parts} if self.cooperative else set()

    def partitions(self):
        with self.lock:
            return set(self.owned)

    def run(self):
        try:
            self.go.wait()
            self.consumer.subscribe([self.topic], on_assign=self.on_assign, on_revoke=self.on_revoke,
                                    on_lost=self.on_revoke)
            while not (self.stop.is_set() or self.leave.is_set()):
                self.consumer.poll(0.02)
        except BaseException as e:  # noqa: BLE001 - checked by the driver
            self.error = e
        finally:
            t = now()
            self.consumer.close()
            self.close_s = now() - t
            with self.lock:
                self.owned = set()


def wait_covered(members, partitions, timeout=120):
    """Seconds until every member owns something and together they own each
    partition exactly once."""
    start = now()
    while now() - start < timeout:
        owned = [m.partitions() for m in members]
        if all(owned) and sum(map(len, owned)) == partitions and len(set().union(*owned)) == partitions:
            return now()
        for m in members:
            if m.error:
                raise m.error
        time.sleep(0.002)
    raise TimeoutError(f"{len(members)} members did not cover {partitions} partitions in {timeout} s: "
                       f"{[sorted(m.partitions()) for m in members]}")


def rebalance_once(bench, topic, strategy, members, partitions, heartbeat_ms):
    group = bench.name(f"rb-{uuid.uuid4().hex[:6]}")
    ms = [Member(bench, group, topic, strategy, heartbeat_ms) for _ in range(members + 1)]
    first, extra = ms[:members], ms[members]
    for m in ms:
        m.start()
    out = {}
    try:
        before = bench.metrics.scrape()
        t = now()
        for m in first:
            m.go.set()
        out["initial_ms"] = (wait_covered(first, partitions) - t) * 1e3
        mid = bench.metrics.scrape()
        t = now()
        extra.go.set()
        out["join_ms"] = (wait_covered(first + [extra], partitions) - t) * 1e3
        mid2 = bench.metrics.scrape()
        t = now()
        first[0].leave.set()
        out["leave_ms"] = (wait_covered(first[1:] + [extra], partitions) - t) * 1e3
        first[0].join()
        out["close_ms"] = first[0].close_s * 1e3
        after = bench.metrics.scrape()
        if after:
            g = lambda a, b: Metrics.delta(a, b)["rebalances"]  # noqa: E731
            out["generations"] = {"initial": g(before, mid), "join": g(mid, mid2), "leave": g(mid2, after)}
    finally:
        for m in ms:
            m.go.set()
            m.stop.set()
        for m in ms:
            m.join(timeout=60)
    return out


def rebalances(bench, args):
    topic = bench.topic("rebalance", args.rebalance_partitions)
    out = {}
    for heartbeat in [int(h) for h in args.heartbeat_ms.split(",")]:
        for strategy in ["cooperative-sticky", "range"]:
            runs = []
            for r in range(args.rebalance_runs):
                log(f"rebalance: {args.rebalance_members} members + 1, {strategy}, heartbeat.interval.ms={heartbeat}, "
                    f"run {r + 1}/{args.rebalance_runs}")
                runs.append(rebalance_once(bench, topic, strategy, args.rebalance_members,
                                           args.rebalance_partitions, heartbeat))
                log("  " + ", ".join(f"{k} {v:.0f} ms" for k, v in runs[-1].items() if k.endswith("_ms")))
            out[f"{strategy} {heartbeat}"] = {
                "strategy": strategy, "heartbeat_ms": heartbeat, "runs": runs,
                **{k: statistics.median(r[k] for r in runs) for k in ["initial_ms", "join_ms", "leave_ms", "close_ms"]}}
    return out


# ---------------------------------------------------------- 3. consume ----


def fill(bench, topic, partitions, records, size):
    p = Producer(bench.conf(acks="all", linger_ms=5, batch_num_messages=10000,
                            queue_buffering_max_messages=1000000, queue_buffering_max_kbytes=1048576))
    value = b"v" * size
    failed = []
    cb = lambda err, _msg: failed.append(err) if err else None  # noqa: E731
    start = now()
    for i in range(records):
        while True:
            try:
                p.produce(topic, value, partition=i % partitions, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        if i % 10000 == 0:
            p.poll(0)
    if p.flush(120) != 0 or failed:
        raise RuntimeError(f"producing the consume workload failed: {failed[:1]}")
    seconds = now() - start
    c = Consumer(bench.conf(group_id=bench.name("wm"), enable_auto_commit=False))
    ends = {q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)[1] for q in range(partitions)}
    c.close()
    if sum(ends.values()) != records:
        raise RuntimeError(f"expected {records} records, the partitions hold {ends}")
    return {"records": records, "seconds": seconds, "per_s": records / seconds}, ends


class Progress:
    """The highest offset read per partition, shared by a run's consumers:
    done once every partition has been read to its end."""

    def __init__(self, ends):
        self.ends = ends
        self.seen = {p: -1 for p in ends}
        self.lock = threading.Lock()
        self.delivered = 0
        self.first = None
        self.done = threading.Event()
        self.end = None
        self.formed_s = None

    def add(self, msgs):
        last = {}
        for m in msgs:
            if m.error():
                raise KafkaException(m.error())
            last[m.partition()] = m.offset()
        with self.lock:
            t = now()
            if self.first is None:
                self.first = t
            self.delivered += len(msgs)
            for p, o in last.items():
                if o > self.seen[p]:
                    self.seen[p] = o
            if all(self.seen[p] + 1 >= e for p, e in self.ends.items()) and not self.done.is_set():
                self.end = t
                self.done.set()


def read_loop(c, progress, batch, timeout=120):
    deadline = now() + timeout
    while not progress.done.is_set():
        if now() > deadline:
            raise TimeoutError(f"not every record read in {timeout} s: {progress.seen} of {progress.ends}")
        msgs = c.consume(num_messages=batch, timeout=0.5)
        if msgs:
            progress.add(msgs)


def consumer(bench, topic, backoff_ms, **conf):
    """A consumer already connected, with the topic's metadata (so the
    clock leaves out bootstrapping, which direct and group pay alike)."""
    if backoff_ms is not None:
        conf["fetch_queue_backoff_ms"] = backoff_ms
    c = Consumer(bench.conf(**conf))
    c.list_topics(topic, timeout=10)
    return c


def consume_direct(bench, topic, ends, batch, backoff_ms):
    progress = Progress(ends)
    c = consumer(bench, topic, backoff_ms, group_id=bench.name(f"direct-{uuid.uuid4().hex[:6]}"),
                 enable_auto_commit=False)
    start = now()
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
    read_loop(c, progress, batch)
    c.close()
    return progress, start


def consume_direct_split(bench, topic, ends, batch, n, backoff_ms):
    """n consumers in threads, each assign()ed its share of the partitions
    (no group): the baseline of the 3-member group."""
    progress = Progress(ends)
    parts = sorted(ends)
    cs = [consumer(bench, topic, backoff_ms, group_id=bench.name(f"split-{uuid.uuid4().hex[:6]}"),
                   enable_auto_commit=False) for _ in range(n)]
    errors = []

    def worker(i, c):
        try:
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts[i::n]])
            read_loop(c, progress, batch)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            progress.done.set()

    threads = [threading.Thread(target=worker, args=(i, c), daemon=True) for i, c in enumerate(cs)]
    start = now()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for c in cs:
        c.close()
    return progress, start


def consume_group(bench, topic, ends, batch, members, hold, backoff_ms):
    """`members` consumers of a fresh group (auto commit on, the default
    5 s interval), one thread each. The clock starts at subscribe(); with
    `hold`, each member pauses what it is assigned until every member holds
    partitions, and the clock starts when they resume (the steady state of
    a formed group, without the joins)."""
    progress = Progress(ends)
    group = bench.name(f"grp{members}-{uuid.uuid4().hex[:6]}")
    cs = [consumer(bench, topic, backoff_ms, group_id=group, auto_offset_reset="earliest") for _ in range(members)]
    owned = [set() for _ in cs]
    go = threading.Event()
    if not hold:
        go.set()
    errors = []

    def worker(i, c):
        def on_assign(c, parts):
            c.assign(parts)
            if not go.is_set():
                c.pause(parts)
            owned[i] = {p.partition for p in parts}

        def on_revoke(c, parts):
            owned[i] = set()
            c.unassign()

        try:
            c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
            while not go.is_set():
                msgs = c.consume(num_messages=batch, timeout=0.02)
                if msgs:
                    progress.add(msgs)
            if hold:
                c.resume(c.assignment())
            read_loop(c, progress, batch)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            go.set()
            progress.done.set()

    threads = [threading.Thread(target=worker, args=(i, c), daemon=True) for i, c in enumerate(cs)]
    start = now()
    for t in threads:
        t.start()
    formed = None
    if hold:
        deadline = start + 120
        while not errors and now() < deadline:
            o = list(owned)
            if all(o) and sum(map(len, o)) == len(ends) and len(set().union(*o)) == len(ends):
                break
            time.sleep(0.002)
        else:
            errors.append(TimeoutError(f"{members} members did not share {len(ends)} partitions: {owned}"))
        formed = now() - start
        start = now()
        go.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    for c in cs:
        c.close()
    progress.formed_s = formed
    return progress, start


def consume(bench, args):
    partitions, records, size = args.consume_partitions, args.records, args.record_bytes
    topic = bench.topic("consume", partitions)
    log(f"consume: producing {records} records of {size} B to {partitions} partitions")
    out = {}
    out["produce"], ends = fill(bench, topic, partitions, records, size)
    b, backoff = args.consume_batch, args.fetch_queue_backoff_ms
    runs = [("direct", lambda: consume_direct(bench, topic, ends, b, backoff)),
            ("group", lambda: consume_group(bench, topic, ends, b, 1, False, backoff)),
            ("direct3", lambda: consume_direct_split(bench, topic, ends, b, 3, backoff)),
            ("group3", lambda: consume_group(bench, topic, ends, b, 3, True, backoff)),
            ("direct_default", lambda: consume_direct(bench, topic, ends, b, None)),
            ("group_default", lambda: consume_group(bench, topic, ends, b, 1, False, None))]
    for name, fn in runs:
        log(f"consume: {name}")

        def run(fn=fn):
            progress, start = fn()
            total, steady = progress.end - start, progress.end - progress.first
            return {"records": records, "delivered": progress.delivered, "seconds": total,
                    "group_formed_s": progress.formed_s,
                    "to_first_record_s": progress.first - start, "per_s": records / total,
                    "mb_per_s": records * size / total / 1e6, "steady_per_s": records / steady}

        out[name] = bench.phase(run)
    return out


# ----------------------------------------------------------- reporting ----


def fmt_rate(x):
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k" if x >= 1e3 else f"{x:.0f}"


def server_means(s, keys):
    if not s:
        return ""
    parts = []
    for k, label in keys:
        v = s.get(k) or {}
        if v.get("count"):
            parts.append(f"{label} {v['mean_ms']:.2f} ms ×{v['count']:.0f}")
    return "; ".join(parts)


def report(res, args):
    lines = []
    c = res.get("commits")
    if c:
        p1, p8 = c["produce_1"], c["produce_8"]
        lines += ["### Offset commits (one offset per commit)", "",
                  "| workload | per s | p50 / p99 ms | vs. baseline | server: appends per commit, mean stage times |",
                  "|---|---|---|---|---|"]
        stage_keys = [("edge_offset_commit", "edge OffsetCommit"),
                      ("edge_produce", "edge Produce"), ("ingest_produce", "ingest"),
                      ("storage_append", "Append"), ("fsync", "fsync")]

        def server(r, unit):
            s = r.get("server")
            if not s:
                return ""
            n = s["storage_append"]["count"]
            per = f"{n / r[unit]:.2f} appends/{'commit' if unit == 'commits' else 'record'}; " if r[unit] else ""
            return per + server_means(s, stage_keys)

        rows = [("1 consumer, sync", c["sync_1"], p1, "commits"),
                ("8 consumers, one group (one shard), sync", c["sync_8_one_group"], p8, "commits"),
                ("8 consumers, 8 groups, sync", c["sync_8_groups"], p8, "commits"),
                (f"1 consumer, async (≤{c['async_1']['in_flight']} in flight)", c["async_1"], p1, "commits"),
                ("baseline: 1 producer, acks=all, flush each", p1, None, "records"),
                ("baseline: 8 producers, one partition, acks=all, flush each", p8, None, "records")]
        for label, r, base, unit in rows:
            lat = f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}" if "p50_ms" in r else "—"
            ratio = f"{r['per_s'] / base['per_s']:.2f}× ({base['clients']} producer{'s' if base['clients'] > 1 else ''})" if base else "1"
            lines.append(f"| {label} | {fmt_rate(r['per_s'])} | {lat} | {ratio} | {server(r, unit)} |")
        lines.append("")
    r = res.get("rebalance")
    if r:
        lines += [f"### Rebalance, {args.rebalance_members}-member group, {args.rebalance_partitions} partitions "
                  f"(median of {args.rebalance_runs}; ms)", "",
                  f"| assignor, heartbeat.interval.ms | {args.rebalance_members} members assigned (from first subscribe) "
                  f"| +1 member: all {args.rebalance_partitions} partitions across {args.rebalance_members + 1} "
                  f"| −1 member (close()): rest cover all | close() took | generations (run 1: initial / join / leave) |",
                  "|---|---|---|---|---|---|"]
        for v in r.values():
            label = "cooperative-sticky" if v["strategy"] == "cooperative-sticky" else "range (eager)"
            label += f", {v['heartbeat_ms']}"
            g = v["runs"][0].get("generations")
            gens = f"{g['initial']:.0f} / {g['join']:.0f} / {g['leave']:.0f}" if g else ""
            runs = lambda k: "–".join(f"{x[k]:.0f}" for x in sorted(v["runs"], key=lambda x: x[k]))  # noqa: E731
            lines.append(f"| {label} | {v['initial_ms']:.0f} ({runs('initial_ms')}) | {v['join_ms']:.0f} ({runs('join_ms')}) "
                         f"| {v['leave_ms']:.0f} ({runs('leave_ms')}) | {v['close_ms']:.0f} | {gens} |")
        lines.append("")
    k = res.get("consume")
    if k:
        d = k["direct"]
        lines += [f"### Consume, {args.records} records × {args.record_bytes} B, {args.consume_partitions} partitions", "",
                  "| consumer | records/s (MB/s), start to last record | time to first record | records/s from first record | vs. baseline: (a), or (c0) for (c) | server |",
                  "|---|---|---|---|---|---|"]
        bo = args.fetch_queue_backoff_ms
        for name, label, base in [
                ("direct", f"(a) 1 consumer, assign(), no group; fetch.queue.backoff.ms={bo}", "direct"),
                ("group", f"(b) 1 consumer, subscribe(), auto commit; fetch.queue.backoff.ms={bo}", "direct"),
                ("direct3", f"(c0) 3 consumers (threads), assign() 2 partitions each, no group, total; "
                            f"fetch.queue.backoff.ms={bo}", "direct"),
                ("group3", f"(c) 3 members of one group (threads), total, timed from when all 3 hold partitions; "
                           f"fetch.queue.backoff.ms={bo}", "direct3"),
                ("direct_default", "(a) with librdkafka's default fetch.queue.backoff.ms (1000)", "direct_default"),
                ("group_default", "(b) with librdkafka's default fetch.queue.backoff.ms (1000)", "direct_default")]:
            x, d = k[name], k[base]
            s = x.get("server")
            fetch = f"{s['offset_commits']:.0f} offsets committed" if s else ""
            if x.get("group_formed_s") is not None:
                fetch += f"; group formed {x['group_formed_s'] * 1e3:.0f} ms after subscribe (not timed)"
            ratio = f"{x['per_s'] / d['per_s']:.2f}× ({x['steady_per_s'] / d['steady_per_s']:.2f}× from first record)"
            dup = f", {x['delivered'] - x['records']} redelivered" if x["delivered"] != x["records"] else ""
            lines.append(f"| {label} | {fmt_rate(x['per_s'])} ({x['mb_per_s']:.0f}){dup} | {x['to_first_record_s'] * 1e3:.0f} ms "
                         f"| {fmt_rate(x['steady_per_s'])} | {ratio} | {fetch} |")
        p = k["produce"]
        lines += ["", f"(The records were produced first with one confluent-kafka producer, acks=all, linger.ms=5: "
                  f"{fmt_rate(p['per_s'])} records/s.)", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--metrics", default="", help="runnel's /metrics host:port (optional)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="commits,rebalance,consume")
    ap.add_argument("--commit-seconds", type=float, default=10)
    ap.add_argument("--async-in-flight", type=int, default=64)
    ap.add_argument("--rebalance-members", type=int, default=10)
    ap.add_argument("--rebalance-partitions", type=int, default=20)
    ap.add_argument("--rebalance-runs", type=int, default=3)
    ap.add_argument("--heartbeat-ms", default="3000,100",
                    help="heartbeat.interval.ms values of the rebalance members, comma-separated (librdkafka's default: 3000)")
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--record-bytes", type=int, default=100)
    ap.add_argument("--consume-partitions", type=int, default=6)
    ap.add_argument("--consume-batch", type=int, default=10000, help="num_messages per Consumer.consume()")
    ap.add_argument("--fetch-queue-backoff-ms", type=int, default=10,
                    help="librdkafka fetch.queue.backoff.ms of the consumers (its default, 1000, stalls fetching "
                         "for 1 s whenever the 100000-message queue is full; rows with the default are added)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    bench = Bench(args)
    only = set(args.only.split(","))
    res = {"parameters": vars(args)}
    if "commits" in only:
        res["commits"] = commits(bench, args)
    if "rebalance" in only:
        res["rebalance"] = rebalances(bench, args)
    if "consume" in only:
        res["consume"] = consume(bench, args)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(res, f, indent=2)
    md = report(res, args)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
