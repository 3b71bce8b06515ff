"""confluent-kafka (librdkafka 2.x) against the runnel Kafka edge."""

import time
from collections import defaultdict

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource, ConfigSource, NewTopic

from conftest import unique


def producer(bootstrap, **extra):
    return Producer({"bootstrap.servers": bootstrap, **extra})


def consumer(bootstrap, **extra):
    # librdkafka requires a group.id even for assign(); no group is joined.
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": unique("g"),
        "enable.auto.commit": False,
        **extra,
    }
    return Consumer(conf)


def produce_all(p, topic, records, **kw):
    """Produces (key, value, headers) tuples; returns delivery reports."""
    reports = []
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            reports.append((msg.key(), msg.partition(), msg.offset()))

    for key, value, headers in records:
        while True:
            try:
                p.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery, **kw)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0
    return reports, errors


def consume(c, expected, timeout=120):
    out = []
    deadline = time.time() + timeout
    while len(out) < expected and time.time() < deadline:
        for m in c.consume(num_messages=10000, timeout=1.0):
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(m.error())
            out.append(m)
    return out


def test_100k_keyed_records_with_headers_in_order(bootstrap, new_topic):
    topic = new_topic("keyed", partitions=12)
    n, keys = 100_000, 1000
    seq = defaultdict(int)
    records = []
    for i in range(n):
        key = f"key-{i % keys}".encode()
        s = seq[key]
        seq[key] += 1
        records.append((key, f"{key.decode()}:{s}".encode(), [("seq", str(s).encode()), ("src", b"confluent")]))
    p = producer(bootstrap, **{"linger.ms": 20})
    reports, errors = produce_all(p, topic, records)
    assert errors == []
    assert len(reports) == n

    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, i, OFFSET_BEGINNING) for i in range(12)])
    got = consume(c, n)
    c.close()
    assert len(got) == n

    by_partition = defaultdict(list)
    key_partition = {}
    for m in got:
        by_partition[m.partition()].append(m)
        assert key_partition.setdefault(m.key(), m.partition()) == m.partition()
    assert len(by_partition) == 12, "records spread over all 12 partitions"
    for part, msgs in by_partition.items():
        offsets = [m.offset() for m in msgs]
        assert offsets == list(range(len(msgs))), f"partition {part} in order, no gaps"
        next_seq = defaultdict(int)
        for m in msgs:
            key, s = m.value().decode().rsplit(":", 1)
            assert key.encode() == m.key()
            assert int(s) == next_seq[m.key()], "per-key order within the partition"
            next_seq[m.key()] += 1
            assert dict(m.headers()) == {"seq": s.encode(), "src": b"confluent"}


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compression_round_trips(bootstrap, new_topic, codec):
    topic = new_topic(f"codec-{codec}", partitions=1)
    records = [
        (f"k{i}".encode(), (f"value {i} " * 20).encode(), [("codec", codec.encode())])
        for i in range(2000)
    ]
    p = producer(bootstrap, **{"compression.type": codec, "linger.ms": 50})
    reports, errors = produce_all(p, topic, records)
    assert errors == [] and len(reports) == len(records)
    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = consume(c, len(records), timeout=60)
    c.close()
    assert [(m.key(), m.value()) for m in got] == [(k, v) for k, v, _ in records]
    assert all(dict(m.headers()) == {"codec": codec.encode()} for m in got)


def test_message_size_limit(bootstrap, new_topic):
    # The topic default max.message.bytes is 1048588; let the client send
    # more so the edge is the one to refuse.
    topic = new_topic("big", partitions=1)
    p = producer(bootstrap, **{"message.max.bytes": 4_000_000, "linger.ms": 0})
    near = b"x" * 1_040_000
    reports, errors = produce_all(p, topic, [(b"near", near, None)])
    assert errors == [] and len(reports) == 1
    over = b"y" * 1_100_000
    reports, errors = produce_all(p, topic, [(b"over", over, None)])
    assert reports == []
    assert [e.code() for e in errors] == [KafkaError.MSG_SIZE_TOO_LARGE]

    # A topic with a smaller limit.
    small = new_topic("small", partitions=1, config={"max.message.bytes": "20000"})
    _, errors = produce_all(p, small, [(b"a", b"a" * 19_000, None)])
    assert errors == []
    _, errors = produce_all(p, small, [(b"b", b"b" * 21_000, None)])
    assert [e.code() for e in errors] == [KafkaError.MSG_SIZE_TOO_LARGE]

    # What passed reads back whole.
    c = consumer(bootstrap, **{"fetch.max.bytes": 2_000_000})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = consume(c, 1, timeout=30)
    c.close()
    assert got[0].value() == near


def test_auto_offset_reset_with_assign(bootstrap, new_topic):
    topic = new_topic("reset", partitions=1)
    p = producer(bootstrap)
    produce_all(p, topic, [(b"k", f"old-{i}".encode(), None) for i in range(10)])

    # earliest: an offset the log does not have resets to the beginning.
    c = consumer(bootstrap, **{"auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, 1_000_000)])
    got = consume(c, 10, timeout=30)
    c.close()
    assert [m.value() for m in got] == [f"old-{i}".encode() for i in range(10)]

    # latest: resets to the end, then sees only what comes after.
    c = consumer(bootstrap, **{"auto.offset.reset": "latest"})
    c.assign([TopicPartition(topic, 0, 1_000_000)])
    first = first_new_record(c, p, topic, "new")
    c.close()
    assert first.startswith(b"new-"), first

    # Explicit end and beginning.
    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, 0, OFFSET_END)])
    first = first_new_record(c, p, topic, "newer")
    c.close()
    assert first.startswith(b"newer-"), first
    c = consumer(bootstrap)
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = consume(c, 10, timeout=30)
    c.close()
    assert got[0].value() == b"old-0"


def first_new_record(c, p, topic, prefix, timeout=30):
    """Keeps producing `prefix-i` until the consumer reads something; returns
    the first value it read (a consumer positioned at the end never sees the
    records that were there before)."""
    deadline = time.time() + timeout
    i = 0
    while time.time() < deadline:
        produce_all(p, topic, [(b"k", f"{prefix}-{i}".encode(), None)])
        i += 1
        for m in c.consume(num_messages=100, timeout=0.3):
            if not m.error():
                return m.value()
    raise AssertionError("the consumer read nothing")


def test_offsets_for_times_and_watermarks(bootstrap, new_topic):
    topic = new_topic("times", partitions=1)
    base = int(time.time() * 1000) - 100_000
    p = producer(bootstrap)
    for i in range(10):
        p.produce(topic, key=b"k", value=str(i).encode(), timestamp=base + i * 1000)
    assert p.flush(30) == 0
    c = consumer(bootstrap)
    found = c.offsets_for_times([TopicPartition(topic, 0, base + 5500)], timeout=10)
    assert found[0].offset == 6
    found = c.offsets_for_times([TopicPartition(topic, 0, base)], timeout=10)
    assert found[0].offset == 0
    found = c.offsets_for_times([TopicPartition(topic, 0, base + 999_999)], timeout=10)
    assert found[0].offset == OFFSET_END  # no such record: -1
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 10)
    c.close()


def test_admin_topics_and_configs(bootstrap, admin):
    name = unique("admin")
    # validate_only creates nothing.
    fs = admin.create_topics([NewTopic(name, 3, 1)], validate_only=True)
    fs[name].result(timeout=30)
    assert name not in admin.list_topics(timeout=10).topics

    fs = admin.create_topics(
        [NewTopic(name, 3, 1, config={"retention.ms": "3600000", "cleanup.policy": "compact"})],
        operation_timeout=10,
    )
    fs[name].result(timeout=30)
    md = admin.list_topics(timeout=10)
    assert name in md.topics
    assert sorted(md.topics[name].partitions) == [0, 1, 2]
    assert md.cluster_id
    assert md.controller_id in md.brokers

    desc = admin.describe_topics(TopicCollection([name]))[name].result(timeout=10)
    assert desc.name == name
    assert len(desc.partitions) == 3
    assert not desc.topic_id is None

    res = ConfigResource("topic", name)
    configs = admin.describe_configs([res])[res].result(timeout=10)
    assert configs["retention.ms"].value == "3600000"
    assert not configs["retention.ms"].is_default
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["cleanup.policy"].value == "compact"
    assert configs["max.message.bytes"].value == "1048588"
    assert configs["max.message.bytes"].is_default

    cluster = admin.describe_cluster().result(timeout=10)
    assert cluster.cluster_id == md.cluster_id
    assert cluster.controller is not None and len(cluster.nodes) >= 1

    # Errors a client knows.
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
    bad = unique("badcfg")
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(bad, 1, 1, config={"retention.ms": "soon"})])[bad].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.INVALID_CONFIG
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic("bad/name", 1, 1)])["bad/name"].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.TOPIC_EXCEPTION
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(bad, 0, 1)])[bad].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.INVALID_PARTITIONS

    admin.delete_topics([name], operation_timeout=10)[name].result(timeout=30)
    assert name not in admin.list_topics(timeout=10).topics
    with pytest.raises(KafkaException) as e:
        admin.delete_topics([name])[name].result(timeout=30)
    assert e.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_unknown_topic(bootstrap):
    topic = unique("missing")
    p = producer(bootstrap, **{"topic.metadata.propagation.max.ms": 2000, "message.timeout.ms": 10000})
    _, errors = produce_all(p, topic, [(b"k", b"v", None)])
    assert [e.code() for e in errors] in (
        [KafkaError._UNKNOWN_TOPIC],
        [KafkaError.UNKNOWN_TOPIC_OR_PART],
    )
    # Metadata for the topic says it does not exist.
    md = p.list_topics(topic, timeout=10)
    assert md.topics[topic].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
