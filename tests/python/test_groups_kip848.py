"""Consumer groups on the next-generation protocol (KIP-848) through the
runnel Kafka edge, with confluent-kafka (librdkafka 2.x) consumers set to
`group.protocol=consumer`: the edge serves ConsumerGroupHeartbeat and the
groups service assigns partitions (server-side assignor, revoke before
assign). Every test uses its own topic and group ids.

In that mode the client must not set session.timeout.ms,
heartbeat.interval.ms or partition.assignment.strategy (they are the
server's). `run_edge_tests.sh` starts runnel with a 500 ms consumer
heartbeat interval (Kafka's default is 5 s), so reconciliation takes a few
hundred milliseconds per step; every wait is bounded and fails saying what
it waited for.

The `runnel group describe` test needs the groups and coordinator gRPC
addresses: run_edge_tests.sh exports RUNNEL_GROUPS_ADDRESS and
RUNNEL_COORDINATOR_ADDRESS (the test is skipped without them).
"""

import math
import os
import subprocess
import threading
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

# Settings of every KIP-848 member in these tests.
KIP848_CONF = {
    "group.protocol": "consumer",
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "max.poll.interval.ms": 30000,
}

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def wait_until(what, predicate, timeout, step=0.1, pump=None):
    """Waits until predicate() is true; `pump` runs between checks (to poll
    consumers). Fails saying `what` it waited for."""
    deadline = time.time() + timeout
    while True:
        if pump is not None:
            pump()
        if predicate():
            return
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if pump is None:
            time.sleep(step)


def produce(bootstrap, topic, n, start=0, keys=100):
    """Produces n keyed records with acks=all, values "start".."start+n-1";
    returns {(partition, offset): value} from the delivery reports."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20})
    delivered = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[(msg.partition(), msg.offset())] = msg.value()

    for i in range(start, start + n):
        while True:
            try:
                p.produce(topic, key=f"key-{i % keys}".encode(), value=str(i).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0, "records still unsent after 60 s"
    assert errors == []
    assert len(delivered) == n
    return delivered


class Member:
    """A KIP-848 consumer subscribed to a topic in a group (manual
    commits). Records its rebalance callbacks as (monotonic time, "assign" |
    "revoke" | "lost", [partitions]); with this protocol they are
    incremental (partitions added, partitions taken away)."""

    def __init__(self, bootstrap, group, topic, name, **conf):
        self.name = name
        self.topic = topic
        self.events = []
        self.assignment = set()
        self.errors = []
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": name,
                **KIP848_CONF,
                **conf,
            }
        )
        self.consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _note(self, kind, partitions):
        parts = sorted(p.partition for p in partitions)
        self.events.append((time.monotonic(), kind, parts))
        if kind == "assign":
            self.assignment |= set(parts)
        else:
            self.assignment -= set(parts)

    def _on_assign(self, consumer, partitions):
        self._note("assign", partitions)

    def _on_revoke(self, consumer, partitions):
        self._note("revoke", partitions)

    def _on_lost(self, consumer, partitions):
        self._note("lost", partitions)

    def poll(self, timeout=0.2, max_messages=1000):
        out = []
        for m in self.consumer.consume(num_messages=max_messages, timeout=timeout):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(m.error())
            out.append(m)
        return out

    def commit(self, msgs):
        """Commits, synchronously, the offsets after `msgs`; returns
        {partition: offset} committed. Raises KafkaException when the
        commit failed."""
        offsets = {}
        for m in msgs:
            offsets[m.partition()] = max(offsets.get(m.partition(), 0), m.offset() + 1)
        result = self.consumer.commit(
            offsets=[TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())],
            asynchronous=False,
        )
        failed = [tp for tp in result if tp.error is not None]
        if failed:
            raise KafkaException(failed[0].error)
        return offsets

    def close(self):
        self.consumer.close()


def ownership(members):
    """{partition: [(start, end, member)]} from the members' callbacks; an
    ownership still open ends at infinity."""
    out = defaultdict(list)
    for m in members:
        opened = {}
        for t, kind, parts in sorted(m.events, key=lambda e: e[0]):
            for p in parts:
                if kind == "assign":
                    opened.setdefault(p, t)
                elif p in opened:
                    out[p].append((opened.pop(p), t, m.name))
        for p, t in opened.items():
            out[p].append((t, math.inf, m.name))
    return out


def overlaps(members):
    """Partitions owned by two members at once, as seen by the members'
    callbacks (a member's callback view lies inside the coordinator's: it
    learns of an assignment after it is made and gives a partition back
    after its revoke callback ran)."""
    found = []
    for p, spans in ownership(members).items():
        spans.sort()
        for (s1, e1, m1), (s2, e2, m2) in zip(spans, spans[1:]):
            if s2 < e1:
                found.append((p, m1, (s1, e1), m2, (s2, e2)))
    return found


class ProcessLog:
    """What every consumer processed and committed, in one global order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.entries = []  # (member, "rec", partition, offset, value) | (member, "commit", {p: offset})
        self.seen = set()

    def records(self, member, msgs):
        with self.lock:
            for m in msgs:
                self.entries.append((member, "rec", m.partition(), m.offset(), m.value()))
                self.seen.add((m.partition(), m.offset()))

    def committed(self, member, offsets):
        with self.lock:
            self.entries.append((member, "commit", dict(offsets)))

    def snapshot(self):
        with self.lock:
            return list(self.entries)


class Worker(threading.Thread):
    """One group member in its own thread: consume a batch, process it
    (into the log), commit it synchronously, repeat; close() when stopped."""

    def __init__(self, bootstrap, group, topic, name, log):
        super().__init__(name=name, daemon=True)
        self.args = (bootstrap, group, topic, name)
        self.log = log
        self.stop = threading.Event()
        self.closed = threading.Event()
        self.member = None
        self.error = None
        self.commit_errors = []

    def run(self):
        try:
            self.member = Member(*self.args)
            while not self.stop.is_set():
                batch = self.member.poll(0.2, 500)
                if not batch:
                    continue
                self.log.records(self.name, batch)
                try:
                    self.log.committed(self.name, self.member.commit(batch))
                except KafkaException as e:
                    # The at-least-once window: processed, not committed.
                    self.commit_errors.append(str(e))
            self.member.close()
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.closed.set()


def analyse(entries, expected):
    """Checks the log against the produced records {(p, o): value}: every
    record read has the value produced at its offset, each partition is read
    in offset order without skipping; returns the records read more than
    once {(p, o): [members]}."""
    readers = defaultdict(list)
    max_seen = {}
    for e in entries:
        if e[1] != "rec":
            continue
        member, _, p, o, value = e
        assert (p, o) in expected, f"{member} read ({p}, {o}), which was never produced"
        assert value == expected[(p, o)], f"({p}, {o}) has {value!r}, produced {expected[(p, o)]!r}"
        if o > max_seen.get(p, -1):
            assert o == max_seen.get(p, -1) + 1, (
                f"partition {p}: {member} read offset {o} after {max_seen.get(p, -1)} (skipped records)"
            )
            max_seen[p] = o
        readers[(p, o)].append(member)
    return {k: v for k, v in readers.items() if len(v) > 1}


# ---------------------------------------------------------------------------
# 1. Three KIP-848 consumers share a topic, then a member joins and one
#    leaves under load.


def test_kip848_three_consumers_then_rebalance(bootstrap, new_topic, new_group):
    topic = new_topic("k848-share", partitions=6)
    group = new_group("k848-share")
    expected = produce(bootstrap, topic, 30_000)
    log = ProcessLog()
    workers = [Worker(bootstrap, group, topic, f"c{i}", log) for i in (1, 2, 3)]
    for w in workers:
        w.start()

    def check_workers():
        for w in workers:
            if w.error is not None:
                raise AssertionError(f"{w.name} failed: {w.error!r}")

    def members():
        return [w.member for w in workers if w.member is not None]

    def balanced(live):
        check_workers()
        current = [set(w.member.assignment) for w in live if w.member is not None]
        return (
            len(current) == len(live)
            and set().union(*current) == set(range(6))
            and sum(len(a) for a in current) == 6
            and all(len(a) == 6 // len(live) for a in current)
        )

    try:
        wait_until(
            "30,000 records read by the group",
            lambda: check_workers() or len(log.seen) >= 30_000,
            60,
        )
        try:
            wait_until("the 3 members to hold 2 partitions each", lambda: balanced(workers), 20)
        except AssertionError:
            raise AssertionError(f"assignments: {[(m.name, m.events) for m in members()]}")
        # Phase 1: exactly once, in order; every member got partitions.
        entries = log.snapshot()
        duplicates = analyse(entries, expected)
        recs = [e for e in entries if e[1] == "rec"]
        assert len(recs) == 30_000 and log.seen == set(expected), (
            f"{len(recs)} records read, {len(log.seen)} distinct, {len(duplicates)} duplicated; "
            f"commit errors: {[w.commit_errors for w in workers]}"
        )
        assert duplicates == {}
        for w in workers:
            assigned = {p for _, kind, ps in w.member.events if kind == "assign" for p in ps}
            assert assigned, f"{w.name} was never assigned a partition: {w.member.events}"
        assert overlaps(members()) == [], [(m.name, m.events) for m in members()]

        # Phase 2: c4 joins and c1 leaves (a clean close) while 10,000 more
        # records are produced.
        c4 = Worker(bootstrap, group, topic, "c4", log)
        workers.append(c4)
        c4.start()
        workers[0].stop.set()
        for i in range(10):
            expected.update(produce(bootstrap, topic, 1000, start=30_000 + i * 1000))
            time.sleep(0.1)
        wait_until(
            "all 40,000 records read by the group",
            lambda: check_workers() or len(log.seen) >= 40_000,
            60,
        )
        assert workers[0].closed.wait(10), "c1 did not close"
        live = workers[1:]
        try:
            wait_until("c2, c3 and c4 to hold 2 partitions each", lambda: balanced(live), 20)
        except AssertionError:
            raise AssertionError(f"assignments: {[(m.name, m.events) for m in members()]}")
        check_workers()
    finally:
        for w in workers:
            w.stop.set()
        for w in workers:
            w.join(20)
    check_workers()

    entries = log.snapshot()
    duplicates = analyse(entries, expected)
    recs = [e for e in entries if e[1] == "rec"]
    assert log.seen == set(expected), f"{len(set(expected) - log.seen)} records never read"
    commit_errors = {w.name: w.commit_errors for w in workers if w.commit_errors}
    per_member = Counter(e[0] for e in recs)
    print(
        f"\nKIP-848 rebalance: {len(recs)} records read for {len(expected)} produced, "
        f"{len(duplicates)} duplicates, per member {dict(per_member)}, commit errors {commit_errors}"
    )
    # Commit after processing and clean closes: nothing is read twice.
    assert duplicates == {}, (
        f"{len(duplicates)} records read twice, e.g. {sorted(duplicates.items())[:5]}; "
        f"commit errors: {commit_errors}"
    )
    assert per_member["c4"] > 0, per_member
    assert overlaps(members()) == [], [(m.name, m.events) for m in members()]


# ---------------------------------------------------------------------------
# 2. Committed offsets survive a restart of the consumer.


def test_kip848_committed_offsets_survive_restart(bootstrap, new_topic, new_group):
    topic = new_topic("k848-restart", partitions=3)
    group = new_group("k848-restart")
    expected = produce(bootstrap, topic, 3000)

    first = Member(bootstrap, group, topic, "first")
    got = []
    try:
        wait_until("the first consumer to read 1,000 records", lambda: len(got) >= 1000, 30,
                   pump=lambda: got.extend(first.poll(0.2, 100)))
        got = got[:1000]
        committed = first.commit(got)
        # What the group now has, as a client reads it.
        stored = first.consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        assert {tp.partition: tp.offset for tp in stored if tp.offset >= 0} == committed
    finally:
        first.close()

    second = Member(bootstrap, group, topic, "second")
    rest = []
    try:
        wait_until("the second consumer to read the other 2,000 records", lambda: len(rest) >= 2000, 30,
                   pump=lambda: rest.extend(second.poll(0.2)))
        # Nothing more arrives.
        rest.extend(second.poll(1.0))
    finally:
        second.close()
    first_read = {p: min(m.offset() for m in rest if m.partition() == p) for p in {m.partition() for m in rest}}
    for p, o in committed.items():
        if p in first_read:
            assert first_read[p] == o, f"partition {p}: restarted at {first_read[p]}, committed {o}"
    before = {(m.partition(), m.offset()) for m in got}
    after = {(m.partition(), m.offset()) for m in rest}
    assert len(rest) == 2000 and not (before & after) and before | after == set(expected)


# ---------------------------------------------------------------------------
# 3. The group as tools see it: `runnel group describe` and AdminClient.


def runnel_bin():
    path = os.environ.get("RUNNEL_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "debug", "runnel"
    )
    if not os.access(path, os.X_OK):
        pytest.skip(f"no runnel binary at {path}")
    return path


def describe_members(group):
    """`runnel group describe`: (header line, {client id: {partition}})."""
    groups = os.environ.get("RUNNEL_GROUPS_ADDRESS")
    coordinator = os.environ.get("RUNNEL_COORDINATOR_ADDRESS")
    if not groups or not coordinator:
        pytest.skip("needs RUNNEL_GROUPS_ADDRESS and RUNNEL_COORDINATOR_ADDRESS (set by run_edge_tests.sh)")
    out = subprocess.run(
        [runnel_bin(), "group", "describe", group, "--groups", groups, "--coordinator", coordinator],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    members = {}
    in_members = False
    for line in lines:
        if line.startswith("MEMBER"):
            in_members = True
            continue
        if in_members:
            if not line.strip():
                break
            # MEMBER INSTANCE CLIENT-ID HOST ASSIGNMENT (topic:p,p …)
            fields = line.split()
            parts = set()
            for a in fields[4:]:
                _, ps = a.rsplit(":", 1)
                parts |= {int(p) for p in ps.split(",") if p}
            members[fields[2]] = parts
    return lines[0], members, out.stdout


def test_kip848_group_describe_and_list(bootstrap, admin, new_topic, new_group):
    topic = new_topic("k848-describe", partitions=4)
    group = new_group("k848-describe")
    produce(bootstrap, topic, 200)
    a = Member(bootstrap, group, topic, "k848-a")
    b = Member(bootstrap, group, topic, "k848-b")
    pump = lambda: (a.poll(0.1), b.poll(0.1))  # noqa: E731
    try:
        wait_until(
            "a and b to hold 2 partitions each",
            lambda: len(a.assignment) == 2 and len(b.assignment) == 2,
            30,
            pump=pump,
        )
        header, members, text = describe_members(group)
        assert "protocol consumer/" in header, text
        assert "members 2" in header, text
        assert members == {"k848-a": a.assignment, "k848-b": b.assignment}, text

        listed = admin.list_consumer_groups(request_timeout=10).result(timeout=30)
        ours = [g for g in listed.valid if g.group_id == group]
        assert len(ours) == 1, [g.group_id for g in listed.valid]
        kind = getattr(ours[0], "type", None)
        # ListGroups v5 carries the group type: a KIP-848 group is CONSUMER.
        assert kind is not None and kind.name == "CONSUMER", kind
        print(f"\nAdminClient lists {group} with state {ours[0].state} and type {kind}")
        assert not ours[0].is_simple_consumer_group

        # The edge does not serve ConsumerGroupDescribe (API 69), so the
        # client describes the group with DescribeGroups, which shows the
        # KIP-848 members and their assignments the classic way.
        d = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=30)
        seen = {m.client_id: {tp.partition for tp in m.assignment.topic_partitions} for m in d.members}
        assert seen == {"k848-a": a.assignment, "k848-b": b.assignment}, seen
        assert d.state.name == "STABLE", d.state
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------
# 4. A classic consumer cannot join a group that has KIP-848 members.


def test_kip848_classic_member_is_refused(bootstrap, new_topic, new_group):
    topic = new_topic("k848-mixed", partitions=2)
    group = new_group("k848-mixed")
    produce(bootstrap, topic, 100)
    modern = Member(bootstrap, group, topic, "k848-modern")
    classic = None
    try:
        wait_until("the KIP-848 member to hold both partitions", lambda: modern.assignment == {0, 1}, 30,
                   pump=lambda: modern.poll(0.1))
        classic = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": "k848-classic",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
            }
        )
        assigned = []
        classic.subscribe([topic], on_assign=lambda c, ps: assigned.extend(ps))
        errors = []
        read = []

        def pump():
            modern.poll(0.05)
            for m in classic.consume(num_messages=100, timeout=0.2):
                if m.error():
                    errors.append(m.error())
                else:
                    read.append(m)

        wait_until(
            "the classic consumer to be refused with INCONSISTENT_GROUP_PROTOCOL",
            lambda: any(e.code() == KafkaError.INCONSISTENT_GROUP_PROTOCOL for e in errors),
            20,
            pump=pump,
        )
        assert assigned == [] and read == [], (assigned, len(read))
        # The KIP-848 member was not disturbed.
        assert modern.assignment == {0, 1}
    finally:
        if classic is not None:
            classic.close()
        modern.close()


# ---------------------------------------------------------------------------
# 5. A pattern subscription: the coordinator resolves the regex against the
#    topics as they come, so a topic created later is picked up.

def test_kip848_regex_subscription_takes_new_topics(bootstrap, new_topic, new_group):
    from conftest import unique

    base = unique("k848rx")
    first = new_topic(base, partitions=2)
    second = new_topic(base, partitions=1)
    group = new_group("k848-rx")
    expected = {first: produce(bootstrap, first, 200), second: produce(bootstrap, second, 100)}
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **KIP848_CONF})
    c.subscribe([f"^{base}-.*"])
    seen = defaultdict(set)

    def pump():
        for m in c.consume(200, 0.2):
            assert m.error() is None, m.error()
            seen[m.topic()].add((m.partition(), m.offset()))

    def have(topic):
        return seen[topic] == set(expected[topic])

    try:
        wait_until("both matching topics consumed", lambda: have(first) and have(second), 45, pump=pump)
        # A third topic that matches, created after the subscription.
        third = new_topic(base, partitions=1)
        expected[third] = produce(bootstrap, third, 50)
        wait_until("the new matching topic consumed", lambda: have(third), 60, pump=pump)
    finally:
        c.close()
    assert set(seen) == set(expected), f"consumed topics {sorted(seen)}"
