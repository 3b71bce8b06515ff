"""Consumer groups through the runnel Kafka edge, with real clients:
confluent-kafka (librdkafka 2.x) consumers and AdminClient, kafka-python's
KafkaConsumer and KafkaAdminClient, kcat -G, and raw protocol frames for the
error cases. Every test uses its own topic and group ids.

Timing: the broker defaults are assumed (group.min.session.timeout.ms 6000,
group.initial.rebalance.delay.ms 3000, so a new group's first generation
takes about 3 s), clients use session.timeout.ms 6000 and
heartbeat.interval.ms 1000. Every wait is bounded and fails saying what it
waited for.
"""

import os
import shlex
import socket
import struct
import subprocess
import threading
import time
from collections import Counter, defaultdict

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from conftest import unique

# Client settings of every group member in these tests.
GROUP_CONF = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    "max.poll.interval.ms": 30000,
}

# Kafka error codes.
OFFSET_METADATA_TOO_LARGE = 12
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
UNKNOWN_TOPIC_OR_PARTITION = 3
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79


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


def produce(bootstrap, topic, n, start=0, keys=100, **conf):
    """Produces n keyed records with acks=all, values "start".."start+n-1";
    returns {(partition, offset): value} from the delivery reports."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20, **conf})
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
    """A confluent-kafka consumer subscribed to a topic in a group (eager
    protocol, manual commits). Records its rebalance callbacks as
    (time, "assign" | "revoke" | "lost", [partitions])."""

    def __init__(self, bootstrap, group, topic, name, **conf):
        self.name = name
        self.topic = topic
        self.events = []
        self.assignment = set()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "client.id": name,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **GROUP_CONF,
                **conf,
            }
        )
        self.consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _on_assign(self, consumer, partitions):
        parts = sorted(p.partition for p in partitions)
        self.events.append((time.time(), "assign", parts))
        self.assignment |= set(parts)

    def _on_revoke(self, consumer, partitions):
        parts = sorted(p.partition for p in partitions)
        self.events.append((time.time(), "revoke", parts))
        self.assignment -= set(parts)

    def _on_lost(self, consumer, partitions):
        parts = sorted(p.partition for p in partitions)
        self.events.append((time.time(), "lost", parts))
        self.assignment -= set(parts)

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


def read_exactly(member, n, timeout=60, pump=()):
    """Polls until `member` returned n records; returns exactly n (the rest
    of the last batch is dropped, so its offsets are not committed)."""
    got = []
    deadline = time.time() + timeout
    while len(got) < n:
        if time.time() > deadline:
            raise AssertionError(f"{member.name} read {len(got)} of {n} records in {timeout} s")
        got.extend(member.poll(0.2))
        for other in pump:
            other.poll(0.05)
    return got[:n]


# ---------------------------------------------------------------------------
# 1. Three consumers share a topic, then a rebalance under load.


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
        self.started_consuming = threading.Event()
        self.member = None
        self.error = None
        self.commit_errors = []

    def run(self):
        try:
            self.member = Member(*self.args)
            self.started_consuming.set()
            while not self.stop.is_set():
                batch = self.member.poll(0.5, 500)
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
            self.started_consuming.set()


def analyse(entries, expected):
    """Checks the log against the produced records {(p, o): value}: every
    record read has the value produced at its offset, each partition is read
    in offset order without skipping; returns (duplicates, violations):
    records read more than once, and those of them that had been committed
    by the member that read them earlier (never allowed)."""
    occurrences = defaultdict(list)  # (p, o) -> [index in entries]
    max_seen = {}
    for i, e in enumerate(entries):
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
        occurrences[(p, o)].append(i)
    # Whether a record a member read was covered by a later successful commit
    # of that same member.
    covered = set()
    later_max = defaultdict(dict)  # member -> {partition: committed offset}
    for i in range(len(entries) - 1, -1, -1):
        e = entries[i]
        if e[1] == "commit":
            for p, o in e[2].items():
                later_max[e[0]][p] = max(later_max[e[0]].get(p, -1), o)
        elif later_max[e[0]].get(e[2], -1) > e[3]:
            covered.add(i)
    duplicates = {k: v for k, v in occurrences.items() if len(v) > 1}
    violations = [
        (k, [entries[i][0] for i in v]) for k, v in duplicates.items() if any(i in covered for i in v[:-1])
    ]
    return duplicates, violations


def test_three_consumers_share_partitions_then_rebalance(bootstrap, new_topic, new_group):
    topic = new_topic("grp-share", partitions=6)
    group = new_group("grp-share")
    expected = produce(bootstrap, topic, 60_000)
    log = ProcessLog()
    workers = [Worker(bootstrap, group, topic, f"c{i}", log) for i in (1, 2, 3)]
    for w in workers:
        w.start()

    def check_workers():
        for w in workers:
            if w.error is not None:
                raise AssertionError(f"{w.name} failed: {w.error!r}")

    def all_read(n):
        check_workers()
        return len(log.seen) >= n

    try:
        wait_until("60,000 records read by the group", lambda: all_read(60_000), 120)
        # Phase 1: exactly once, in order, shared by all three.
        entries = log.snapshot()
        duplicates, violations = analyse(entries, expected)
        recs = [e for e in entries if e[1] == "rec"]
        assert len(recs) == 60_000 and log.seen == set(expected), (
            f"{len(recs)} records read, {len(log.seen)} distinct, {len(duplicates)} duplicated; "
            f"commit errors: {[w.commit_errors for w in workers]}"
        )
        for w in workers:
            assigned = {p for _, kind, ps in w.member.events if kind == "assign" for p in ps}
            assert assigned, f"{w.name} was never assigned a partition: {w.member.events}"
        def shared():
            current = [set(w.member.assignment) for w in workers]
            return set().union(*current) == set(range(6)) and sum(len(a) for a in current) == 6

        try:
            wait_until("the 3 assignments to split the 6 partitions", shared, 30)
        except AssertionError:
            raise AssertionError(f"assignments: {[(w.name, w.member.events) for w in workers]}")
        per_member = Counter(e[0] for e in recs)
        assert set(per_member) == {"c1", "c2", "c3"}, per_member

        # Phase 2: a fourth member joins and c1 leaves while 20,000 more
        # records are produced.
        # records are produced: 15,000 in chunks during the rebalance, the
        # last 5,000 once c1 is gone and c4 has partitions.
        c4 = Worker(bootstrap, group, topic, "c4", log)
        workers.append(c4)
        c4.start()
        workers[0].stop.set()
        for i in range(15):
            expected.update(produce(bootstrap, topic, 1000, start=60_000 + i * 1000))
            time.sleep(0.2)
        workers[0].join(30)
        assert not workers[0].is_alive(), "c1 did not close within 30 s"
        wait_until(
            "c4 to get partitions",
            lambda: check_workers() or c4.member is not None and c4.member.assignment,
            60,
        )
        expected.update(produce(bootstrap, topic, 5000, start=75_000))
        wait_until("all 80,000 records read by the group", lambda: all_read(80_000), 120)
    finally:
        for w in workers:
            w.stop.set()
        for w in workers:
            w.join(30)
    check_workers()
    entries = log.snapshot()
    duplicates, violations = analyse(entries, expected)
    assert log.seen == set(expected), f"{len(set(expected) - log.seen)} records never read"
    assert violations == [], (
        f"records read again although the member that read them had committed them: {violations[:10]}"
    )
    commit_errors = [(w.name, e) for w in workers for e in w.commit_errors]
    print(
        f"phase 2: {len(duplicates)} records read twice (all uncommitted when revoked); "
        f"commit errors: {commit_errors}"
    )
    if duplicates:
        assert commit_errors, "duplicates without any failed commit"
    c4_parts = {p for _, kind, ps in c4.member.events if kind == "assign" for p in ps}
    assert c4_parts, f"c4 never got a partition: {c4.member.events}"
    assert any(e[0] == "c4" and e[1] == "rec" for e in entries), "c4 read nothing"


# ---------------------------------------------------------------------------
# 2. Committed offsets survive consumer restarts.


def test_committed_offsets_survive_restart(bootstrap, admin, new_topic, new_group):
    topic = new_topic("grp-restart", partitions=3)
    group = new_group("grp-restart")
    # Small batches, so a consumer gets records of every partition early.
    expected = produce(bootstrap, topic, 3000, **{"batch.num.messages": 50, "linger.ms": 0})

    a = Member(bootstrap, group, topic, "a", **{"max.partition.fetch.bytes": 1024})
    first = read_exactly(a, 1000)
    committed = a.commit(first)
    a.close()
    print(f"consumer A committed {committed}")

    # Consumer.committed() and AdminClient.list_consumer_group_offsets.
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    got = probe.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
    probe.close()
    assert {tp.partition: tp.offset for tp in got} == {p: committed.get(p, OFFSET_INVALID) for p in range(3)}
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    assert listed.group_id == group
    assert {(tp.topic, tp.partition): tp.offset for tp in listed.topic_partitions} == {
        (topic, p): o for p, o in committed.items()
    }
    asked = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(3)])]
    )[group].result(timeout=30)
    assert {tp.partition: tp.offset for tp in asked.topic_partitions} == {
        p: committed.get(p, OFFSET_INVALID) for p in range(3)
    }

    b = Member(bootstrap, group, topic, "b")
    rest = read_exactly(b, 2000)
    # Nothing more arrives.
    extra = []
    for _ in range(5):
        extra.extend(b.poll(0.2))
    b.close()
    assert extra == [], f"B read {len(extra)} records beyond the 3000"
    first_offset = {}
    for m in rest:
        first_offset.setdefault(m.partition(), m.offset())
    for p in range(3):
        if p in first_offset:
            assert first_offset[p] == committed.get(p, 0), (
                f"partition {p}: B started at {first_offset[p]}, committed {committed.get(p)}"
            )
    seen = [(m.partition(), m.offset()) for m in first + rest]
    assert len(seen) == len(set(seen)) == 3000 and set(seen) == set(expected)


# ---------------------------------------------------------------------------
# 3. Static membership: a restart within the session timeout rebalances nothing.


def test_static_member_restart_keeps_assignment(bootstrap, admin, new_topic, new_group):
    # Both members are restarted in turn, so the leader's restart (KIP-345:
    # it gets its assignment back, nobody computes a new one) is always
    # exercised, whichever of the two it is.
    topic = new_topic("grp-static", partitions=4)
    group = new_group("grp-static")
    ids = {"a": unique("inst-a"), "b": unique("inst-b")}
    static = {"session.timeout.ms": 10000, "heartbeat.interval.ms": 1000}

    def start(name):
        return Member(bootstrap, group, topic, name, **{"group.instance.id": ids[name], **static})

    members = {"a": start("a"), "b": start("b")}

    def pump():
        for m in list(members.values()):
            m.poll(0.05)

    def describe_members():
        desc = admin.describe_consumer_groups([group])[group].result(timeout=30)
        assert desc.state == ConsumerGroupState.STABLE, desc.state
        return sorted((m.group_instance_id, m.member_id) for m in desc.members)

    try:
        wait_until(
            "both static members to share the 4 partitions",
            lambda: members["a"].assignment
            and members["b"].assignment
            and members["a"].assignment | members["b"].assignment == set(range(4)),
            60,
            pump=pump,
        )
        # Stable: no callbacks for 2 s.
        settle = time.time() + 2
        last = sum(len(m.events) for m in members.values())
        while time.time() < settle:
            pump()
            if sum(len(m.events) for m in members.values()) != last:
                last = sum(len(m.events) for m in members.values())
                settle = time.time() + 2
        before = {name: set(m.assignment) for name, m in members.items()}
        old_ids = describe_members()
        assert [i for i, _ in old_ids] == sorted(ids.values())

        # A static member's close() sends no LeaveGroup; a new process with
        # the same group.instance.id takes its place.
        closed_at = []
        for name, other in (("a", "b"), ("b", "a")):
            seen = list(members[other].events)
            members[name].close()
            closed_at.append(time.time())
            del members[name]
            members[name] = start(name)
            wait_until(f"the restarted {name} to get its partitions", lambda: members[name].assignment, 30, pump=pump)
            for _ in range(10):  # 0.5 s more of polling
                pump()
            assert members[other].events == seen, (
                f"restarting {name} rebalanced {other}: {members[other].events[len(seen):]}"
            )
        # Past the old sessions' timeout (10 s): their expiry must not
        # rebalance either.
        while time.time() < closed_at[-1] + 13:
            pump()
        for name, m in members.items():
            assert [kind for _, kind, _ in m.events] == ["assign"], f"{name} after its restart: {m.events}"
            assert m.assignment == before[name], f"{name} restarted with {m.assignment}, had {before[name]}"
        new_ids = describe_members()
        assert [i for i, _ in new_ids] == sorted(ids.values())
        assert not {m for _, m in new_ids} & {m for _, m in old_ids}, "the member ids were not replaced"
    finally:
        for m in members.values():
            m.close()


# ---------------------------------------------------------------------------
# 4. kafka-python: KafkaConsumer in a group, KafkaAdminClient group views,
#    OffsetDelete.


def test_kafka_python_group(bootstrap, new_topic, new_group):
    from kafka import KafkaConsumer, TopicPartition as KTP
    from kafka.admin import KafkaAdminClient
    from kafka.errors import GroupSubscribedToTopicError, NoError

    topic = new_topic("grp-kp", partitions=2)
    group = new_group("grp-kp")
    expected = produce(bootstrap, topic, 500)
    c = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="kp-member",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        got = []
        deadline = time.time() + 60
        while len(got) < 500 and time.time() < deadline:
            for _, msgs in c.poll(timeout_ms=500).items():
                got.extend(msgs)
        assert len(got) == 500, f"read {len(got)} of 500"
        assert {(m.partition, m.offset) for m in got} == set(expected)
        c.commit()
        ends = {p: max(o for q, o in expected if q == p) + 1 for p in range(2)}
        for p in range(2):
            assert c.committed(KTP(topic, p)) == ends[p]

        listed = [g for g in a.list_groups() if g["group_id"] == group]
        assert len(listed) == 1, f"the group is listed {len(listed)} times: {listed}"
        assert listed[0]["protocol_type"] == "consumer"
        if "group_state" in listed[0]:
            assert listed[0]["group_state"] == "Stable"
        desc = a.describe_groups([group])[group]
        print("describe_groups (running):", desc)
        assert desc["error"] is None
        assert desc["group_state"] == "Stable"
        assert desc["protocol_type"] == "consumer"
        assert desc["protocol_data"]  # the assignor
        (member,) = desc["members"]
        assert member["client_id"] == "kp-member"
        assert member["member_id"]
        assignment = member["member_assignment"]
        parts = {(t["topic"], p) for t in assignment["assigned_partitions"] for p in t["partitions"]}
        assert parts == {(topic, 0), (topic, 1)}

        # OffsetDelete on a topic the active group subscribes to is refused.
        res = a.delete_group_offsets(group, [KTP(topic, 0)])
        assert res == {KTP(topic, 0): GroupSubscribedToTopicError}, res
    finally:
        c.close()

    wait_until(
        "the group to be Empty after close()",
        lambda: a.describe_groups([group])[group]["group_state"] == "Empty",
        30,
        step=0.5,
    )
    desc = a.describe_groups([group])[group]
    assert desc["members"] == []
    listed = [g for g in a.list_groups() if g["group_id"] == group]
    assert len(listed) == 1
    if "group_state" in listed[0]:
        assert listed[0]["group_state"] == "Empty"
    offsets = a.list_group_offsets(group)[group]
    assert {tp.partition: om.offset for tp, om in offsets.items()} == ends
    # Now OffsetDelete works.
    assert a.delete_group_offsets(group, [KTP(topic, 0)]) == {KTP(topic, 0): NoError}
    offsets = a.list_group_offsets(group)[group]
    assert {tp.partition: om.offset for tp, om in offsets.items()} == {1: ends[1]}
    a.close()


# ---------------------------------------------------------------------------
# 5. kcat -G (the balanced consumer of Debian's kcat and librdkafka).


def kcat_group(kcat, bootstrap, group, topic, count, timeout=60):
    args = [
        kcat, "-b", bootstrap, "-G", group, topic, "-c", str(count), "-q",
        "-f", "%p:%o:%s\n",
        "-X", "auto.offset.reset=earliest",
        "-X", "session.timeout.ms=6000",
        "-X", "heartbeat.interval.ms=1000",
    ]  # fmt: skip
    try:
        result = subprocess.run(args, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"kcat -G got fewer than {count} records in {timeout} s: "
            f"stdout {len((e.stdout or b'').splitlines())} lines, stderr {(e.stderr or b'').decode()[-2000:]}"
        )
    assert result.returncode == 0, result.stderr.decode()
    out = []
    for line in result.stdout.decode().splitlines():
        p, o, v = line.split(":", 2)
        out.append((int(p), int(o), v))
    return out


def test_kcat_balanced_consumer(kcat, bootstrap, admin, new_topic, new_group):
    topic = new_topic("grp-kcat", partitions=3)
    group = new_group("grp-kcat")
    expected = produce(bootstrap, topic, 300)
    got = kcat_group(kcat, bootstrap, group, topic, 300)
    assert {(p, o): v.encode() for p, o, v in got} == expected
    # kcat commits (auto commit) when it closes: a second run reads only what
    # was produced since.
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    ends = Counter(p for p, _ in expected)
    assert {tp.partition: tp.offset for tp in offsets.topic_partitions} == dict(ends)
    more = produce(bootstrap, topic, 60, start=300)
    got = kcat_group(kcat, bootstrap, group, topic, 60)
    assert {(p, o): v.encode() for p, o, v in got} == more


# ---------------------------------------------------------------------------
# 6. AdminClient: list, describe, delete groups; alter and list offsets.


def group_description(admin, group):
    return admin.describe_consumer_groups([group])[group].result(timeout=30)


def test_admin_groups(bootstrap, admin, new_topic, new_group):
    topic = new_topic("grp-admin", partitions=4)
    group = new_group("grp-admin")
    produce(bootstrap, topic, 400)
    m1 = Member(bootstrap, group, topic, "m1")
    m2 = Member(bootstrap, group, topic, "m2")
    members = [m1, m2]

    def pump():
        for m in members:
            m.poll(0.05)

    try:
        wait_until(
            "two members to share the 4 partitions",
            lambda: m1.assignment and m2.assignment and m1.assignment | m2.assignment == set(range(4)),
            60,
            pump=pump,
        )
        wait_until(
            "the group to be Stable",
            lambda: group_description(admin, group).state == ConsumerGroupState.STABLE,
            30,
            pump=pump,
        )
        listing = admin.list_consumer_groups(request_timeout=30).result(timeout=30)
        assert listing.errors == [], listing.errors
        mine = [g for g in listing.valid if g.group_id == group]
        assert len(mine) == 1, f"the group is listed {len(mine)} times"
        assert mine[0].state == ConsumerGroupState.STABLE
        assert not mine[0].is_simple_consumer_group
        stable = admin.list_consumer_groups(states={ConsumerGroupState.STABLE}).result(timeout=30)
        assert group in [g.group_id for g in stable.valid]
        empty = admin.list_consumer_groups(states={ConsumerGroupState.EMPTY}).result(timeout=30)
        assert group not in [g.group_id for g in empty.valid]

        desc = group_description(admin, group)
        assert desc.group_id == group
        assert not desc.is_simple_consumer_group
        assert desc.state == ConsumerGroupState.STABLE
        assert desc.partition_assignor in ("range", "roundrobin"), desc.partition_assignor
        brokers = admin.list_topics(timeout=10).brokers
        assert desc.coordinator is not None and desc.coordinator.id in brokers
        by_client = {m.client_id: m for m in desc.members}
        assert set(by_client) == {"m1", "m2"}
        for m in members:
            d = by_client[m.name]
            assert d.member_id and d.host
            assert {(tp.topic, tp.partition) for tp in d.assignment.topic_partitions} == {
                (topic, p) for p in m.assignment
            }

        # Not while it has members.
        with pytest.raises(KafkaException) as e:
            admin.delete_consumer_groups([group])[group].result(timeout=30)
        assert e.value.args[0].code() == KafkaError.NON_EMPTY_GROUP
        # Offsets of an active group are its members' to commit.
        with pytest.raises(KafkaException) as e:
            result = admin.alter_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 1)])]
            )[group].result(timeout=30)
            errors = [tp.error for tp in result.topic_partitions if tp.error is not None]
            if errors:
                raise KafkaException(errors[0])
        assert e.value.args[0].code() == KafkaError.UNKNOWN_MEMBER_ID, e.value
    finally:
        for m in members:
            m.close()

    wait_until("the group to be Empty", lambda: group_description(admin, group).state == ConsumerGroupState.EMPTY, 30)
    desc = group_description(admin, group)
    assert desc.members == []
    empty = admin.list_consumer_groups(states={ConsumerGroupState.EMPTY}).result(timeout=30)
    assert group in [g.group_id for g in empty.valid]

    # Alter offsets of the empty group, then a member starts there.
    result = admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 7)])]
    )[group].result(timeout=30)
    assert [(tp.partition, tp.offset, tp.error) for tp in result.topic_partitions] == [(0, 5, None), (1, 7, None)]
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    assert {tp.partition: tp.offset for tp in listed.topic_partitions} == {0: 5, 1: 7}
    m3 = Member(bootstrap, group, topic, "m3")
    first = {}
    try:
        deadline = time.time() + 60
        while len(first) < 4 and time.time() < deadline:
            for m in m3.poll(0.2):
                first.setdefault(m.partition(), m.offset())
    finally:
        m3.close()
    assert first == {0: 5, 1: 7, 2: 0, 3: 0}

    # Delete the empty group: it and its offsets are gone.
    wait_until("the group to be Empty", lambda: group_description(admin, group).state == ConsumerGroupState.EMPTY, 30)
    admin.delete_consumer_groups([group])[group].result(timeout=30)
    listing = admin.list_consumer_groups().result(timeout=30)
    assert group not in [g.group_id for g in listing.valid]
    try:
        desc = group_description(admin, group)
        assert desc.state == ConsumerGroupState.DEAD and desc.members == []
    except KafkaException as e:
        assert e.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=30)
    assert listed.topic_partitions == []
    # Deleting again: no such group.
    with pytest.raises(KafkaException) as e:
        admin.delete_consumer_groups([group])[group].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND


# ---------------------------------------------------------------------------
# 7. Bad input, sent as raw protocol frames (kafka-python's message classes).


class Wire:
    """One connection to a broker speaking Kafka's protocol with
    kafka-python's request and response classes; versions are the highest
    both sides support, capped by `prefer`."""

    def __init__(self, address, timeout=30):
        from kafka.protocol.metadata.api_versions import ApiVersionsRequest, ApiVersionsResponse

        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.correlation = 0
        self.correlation += 1
        req = ApiVersionsRequest(version=0)
        req.with_header(correlation_id=self.correlation, client_id="runnel-raw")
        self.sock.sendall(req.encode(header=True, framed=True))
        body = self._response()
        assert struct.unpack(">i", body[:4])[0] == self.correlation
        resp = ApiVersionsResponse.decode(body[4:], version=0)
        assert resp.error_code == 0
        self.supported = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            buf += chunk
        return buf

    def _response(self):
        (size,) = struct.unpack(">i", self._read(4))
        return self._read(size)

    def version(self, request_cls, prefer):
        lo, hi = self.supported.get(request_cls.API_KEY, (None, None))
        assert hi is not None, f"the broker does not support {request_cls.__name__}"
        v = min(hi, prefer, request_cls.max_version)
        assert v >= lo, f"{request_cls.__name__}: broker supports {lo}..{hi}, test wants <= {prefer}"
        return v

    def call(self, request_cls, response_cls, prefer, **fields):
        v = self.version(request_cls, prefer)
        self.correlation += 1
        req = request_cls(version=v, **fields)
        req.with_header(correlation_id=self.correlation, client_id="runnel-raw")
        self.sock.sendall(req.encode(header=True, framed=True))
        resp = response_cls.decode(self._response(), version=v, header=True)
        assert resp.header.correlation_id == self.correlation
        return resp

    def close(self):
        self.sock.close()


def subscription(topic):
    """ConsumerProtocolSubscription v0: topics, no user data."""
    t = topic.encode()
    return struct.pack(">hih", 0, 1, len(t)) + t + struct.pack(">i", -1)


def assignment(topic, partitions):
    """ConsumerProtocolAssignment v0."""
    t = topic.encode()
    out = struct.pack(">hih", 0, 1, len(t)) + t + struct.pack(">i", len(partitions))
    out += b"".join(struct.pack(">i", p) for p in partitions)
    return out + struct.pack(">i", -1)


def test_bad_group_requests(bootstrap, new_topic, new_group):
    from kafka.protocol.admin.groups import DeleteGroupsRequest, DeleteGroupsResponse
    from kafka.protocol.consumer.group import (
        HeartbeatRequest,
        HeartbeatResponse,
        JoinGroupRequest,
        JoinGroupResponse,
        LeaveGroupRequest,
        LeaveGroupResponse,
        OffsetCommitRequest,
        OffsetCommitResponse,
        OffsetFetchRequest,
        OffsetFetchResponse,
        SyncGroupRequest,
        SyncGroupResponse,
    )
    from kafka.protocol.metadata.find_coordinator import FindCoordinatorRequest, FindCoordinatorResponse

    topic = new_topic("grp-raw", partitions=2)
    group = new_group("grp-raw")
    produce(bootstrap, topic, 20)

    connections = {}

    def coordinator(group_id):
        """A connection to the group's coordinator (FindCoordinator)."""
        w = Wire(bootstrap.split(",")[0])
        try:
            v = w.version(FindCoordinatorRequest, 4)
            if v >= 4:  # KIP-699: batched keys
                resp = w.call(FindCoordinatorRequest, FindCoordinatorResponse, 4, key_type=0, coordinator_keys=[group_id])
                (resp,) = resp.coordinators
                assert resp.key == group_id
            else:
                resp = w.call(FindCoordinatorRequest, FindCoordinatorResponse, 4, key=group_id, key_type=0)
        finally:
            w.close()
        assert resp.error_code == 0, f"FindCoordinator v{v} for {group_id}: {resp}"
        address = f"{resp.host}:{resp.port}"
        if address not in connections:
            connections[address] = Wire(address)
        return connections[address]

    w = coordinator(group)
    protocols = [JoinGroupRequest.JoinGroupRequestProtocol(name="range", metadata=subscription(topic))]

    def join(member_id="", session_timeout_ms=30000, group_id=group):
        return coordinator(group_id).call(
            JoinGroupRequest, JoinGroupResponse, 5,
            group_id=group_id, session_timeout_ms=session_timeout_ms, rebalance_timeout_ms=10000,
            member_id=member_id, group_instance_id=None, protocol_type="consumer", protocols=protocols,
        )  # fmt: skip

    # A member of our own: join (KIP-394: a new member first learns its id)
    # and sync as the leader.
    resp = join()
    if resp.error_code == MEMBER_ID_REQUIRED:
        assert resp.member_id
        resp = join(member_id=resp.member_id)
    assert resp.error_code == 0, resp
    member, generation = resp.member_id, resp.generation_id
    assert resp.leader == member and [m.member_id for m in resp.members] == [member]
    mine = assignment(topic, [0, 1])
    resp = w.call(
        SyncGroupRequest, SyncGroupResponse, 3,
        group_id=group, generation_id=generation, member_id=member, group_instance_id=None,
        protocol_type="consumer", protocol_name="range",
        assignments=[SyncGroupRequest.SyncGroupRequestAssignment(member_id=member, assignment=mine)],
    )  # fmt: skip
    assert resp.error_code == 0 and resp.assignment == mine, resp

    def heartbeat(generation_id, member_id, group_id=group):
        return w.call(
            HeartbeatRequest, HeartbeatResponse, 3,
            group_id=group_id, generation_id=generation_id, member_id=member_id, group_instance_id=None,
        ).error_code  # fmt: skip

    assert heartbeat(generation, member) == 0
    assert heartbeat(generation - 1, member) == ILLEGAL_GENERATION
    assert heartbeat(generation + 1, member) == ILLEGAL_GENERATION
    assert heartbeat(generation, "no-such-member") == UNKNOWN_MEMBER_ID

    P = OffsetCommitRequest.OffsetCommitRequestTopic.OffsetCommitRequestPartition

    def commit(member_id, generation_id, partitions, topic_name=topic):
        resp = w.call(
            OffsetCommitRequest, OffsetCommitResponse, 8,
            group_id=group, generation_id_or_member_epoch=generation_id, member_id=member_id,
            group_instance_id=None, retention_time_ms=-1,
            topics=[OffsetCommitRequest.OffsetCommitRequestTopic(name=topic_name, partitions=[
                P(partition_index=p, committed_offset=o, committed_leader_epoch=-1, committed_metadata=md)
                for p, o, md in partitions
            ])],
        )  # fmt: skip
        return {(t.name, p.partition_index): p.error_code for t in resp.topics for p in t.partitions}

    assert commit("no-such-member", generation, [(0, 3, "")]) == {(topic, 0): UNKNOWN_MEMBER_ID}
    assert commit(member, generation + 1, [(0, 3, "")]) == {(topic, 0): ILLEGAL_GENERATION}
    # Metadata over offset.metadata.max.bytes (4096) fails that partition only.
    assert commit(member, generation, [(0, 3, "m" * 4097), (1, 4, "fine")]) == {
        (topic, 0): OFFSET_METADATA_TOO_LARGE,
        (topic, 1): 0,
    }
    assert commit(member, generation, [(7, 1, "")]) == {(topic, 7): UNKNOWN_TOPIC_OR_PARTITION}
    resp = w.call(
        OffsetFetchRequest, OffsetFetchResponse, 7,
        group_id=group, require_stable=False,
        topics=[OffsetFetchRequest.OffsetFetchRequestTopic(name=topic, partition_indexes=[0, 1])],
    )  # fmt: skip
    assert resp.error_code == 0
    fetched = {(p.partition_index): (p.committed_offset, p.metadata, p.error_code) for t in resp.topics for p in t.partitions}
    assert fetched == {0: (-1, fetched[0][1], 0), 1: (4, "fine", 0)}, fetched

    # SyncGroup of a group that does not exist.
    missing = unique("no-such-group")
    resp = coordinator(missing).call(
        SyncGroupRequest, SyncGroupResponse, 3,
        group_id=missing, generation_id=1, member_id="m", group_instance_id=None,
        protocol_type="consumer", protocol_name="range", assignments=[],
    )  # fmt: skip
    assert resp.error_code == UNKNOWN_MEMBER_ID, resp

    # Session timeouts outside group.min/max.session.timeout.ms.
    for timeout in (1, 1_800_001):
        resp = join(session_timeout_ms=timeout, group_id=new_group("grp-raw-timeout"))
        assert resp.error_code == INVALID_SESSION_TIMEOUT, (timeout, resp)
    # Our member is untouched by all that.
    assert heartbeat(generation, member) == 0

    missing = unique("no-such-group")
    resp = coordinator(missing).call(DeleteGroupsRequest, DeleteGroupsResponse, 2, groups_names=[missing])
    assert [(r.group_id, r.error_code) for r in resp.results] == [(missing, GROUP_ID_NOT_FOUND)]

    resp = w.call(
        LeaveGroupRequest, LeaveGroupResponse, 4,
        group_id=group, member_id=member,
        members=[LeaveGroupRequest.MemberIdentity(member_id=member, group_instance_id=None)],
    )  # fmt: skip
    assert resp.error_code == 0, resp
    if resp.API_VERSION >= 3:
        assert [(m.member_id, m.error_code) for m in resp.members] == [(member, 0)]
    assert heartbeat(generation, member) == UNKNOWN_MEMBER_ID
    resp = w.call(DeleteGroupsRequest, DeleteGroupsResponse, 2, groups_names=[group])
    assert [(r.group_id, r.error_code) for r in resp.results] == [(group, 0)]
    for conn in connections.values():
        conn.close()

    # The coordinator still serves an ordinary consumer.
    c = Member(bootstrap, new_group("grp-raw-after"), topic, "after")
    try:
        got = read_exactly(c, 20)
    finally:
        c.close()
    assert len({(m.partition(), m.offset()) for m in got}) == 20


# ---------------------------------------------------------------------------
# 8. The groups service is killed and restarted between two consumer runs
#    (processes topology: run_edge_tests.sh sets RUNNEL_GROUPS_RESTART_CMD).


def test_groups_service_restart_keeps_offsets(bootstrap, admin, new_topic, new_group):
    restart = os.environ.get("RUNNEL_GROUPS_RESTART_CMD")
    if not restart:
        pytest.skip(
            "needs RUNNEL_GROUPS_RESTART_CMD (set by run_edge_tests.sh with RUNNEL_TOPOLOGY=processes, "
            "where the groups service runs as its own processes)"
        )
    topic = new_topic("grp-kill", partitions=4)
    group = new_group("grp-kill")
    expected = produce(bootstrap, topic, 2000, **{"batch.num.messages": 50, "linger.ms": 0})

    a = Member(bootstrap, group, topic, "before", **{"max.partition.fetch.bytes": 1024})
    first = read_exactly(a, 800)
    committed = a.commit(first)
    a.close()
    print(f"committed before the restart: {committed}")

    result = subprocess.run(shlex.split(restart), capture_output=True, timeout=120)
    assert result.returncode == 0, f"{restart} failed: {result.stdout.decode()} {result.stderr.decode()}"

    # The offsets are back once a node owns the group's shard again.
    def offsets_back():
        try:
            got = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group)], request_timeout=10
            )[group].result(timeout=15)
        except KafkaException:
            return False
        return {tp.partition: tp.offset for tp in got.topic_partitions} == committed

    wait_until("the committed offsets to be served after the restart", offsets_back, 90, step=1)

    b = Member(bootstrap, group, topic, "after")
    try:
        rest = read_exactly(b, 1200, timeout=90)
        extra = []
        for _ in range(5):
            extra.extend(b.poll(0.2))
    finally:
        b.close()
    assert extra == []
    first_offset = {}
    for m in rest:
        first_offset.setdefault(m.partition(), m.offset())
    for p, o in first_offset.items():
        assert o == committed.get(p, 0), f"partition {p}: started at {o} after the restart, committed {committed.get(p)}"
    seen = [(m.partition(), m.offset()) for m in first + rest]
    assert len(seen) == len(set(seen)) == 2000 and set(seen) == set(expected)
