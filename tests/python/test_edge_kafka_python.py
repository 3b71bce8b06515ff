"""kafka-python against the runnel Kafka edge, with its default settings
(kafka-python 3 turns the idempotent producer on by default)."""

import time
from collections import defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import (
    InvalidConfigurationError,
    InvalidPartitionsError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

from conftest import unique


def consume(c, expected, timeout=120):
    out = []
    deadline = time.time() + timeout
    while len(out) < expected and time.time() < deadline:
        for _, msgs in c.poll(timeout_ms=1000, max_records=10000).items():
            out.extend(msgs)
    return out


def test_keyed_records_with_headers_in_order(bootstrap, new_topic):
    topic = new_topic("kp-keyed", partitions=12)
    n, keys = 100_000, 500
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    seq = defaultdict(int)
    futures = []
    for i in range(n):
        key = f"key-{i % keys}".encode()
        s = seq[key]
        seq[key] += 1
        futures.append(
            p.send(topic, key=key, value=f"{key.decode()}:{s}".encode(), headers=[("seq", str(s).encode())])
        )
    p.flush(timeout=120)
    metas = [f.get(timeout=30) for f in futures]
    p.close()
    assert len({m.partition for m in metas}) == 12

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    c.assign([TopicPartition(topic, i) for i in range(12)])
    got = consume(c, n)
    c.close()
    assert len(got) == n
    by_partition = defaultdict(list)
    for m in got:
        by_partition[m.partition].append(m)
    for part, msgs in by_partition.items():
        assert [m.offset for m in msgs] == list(range(len(msgs))), f"partition {part}"
        next_seq = defaultdict(int)
        for m in msgs:
            key, s = m.value.decode().rsplit(":", 1)
            assert key.encode() == m.key
            assert int(s) == next_seq[m.key]
            next_seq[m.key] += 1
            assert m.headers == [("seq", s.encode())]


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_compression_round_trips(bootstrap, new_topic, codec):
    topic = new_topic(f"kp-codec-{codec or 'none'}", partitions=1)
    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=50)
    values = [(f"value {i} " * 20).encode() for i in range(1000)]
    for i, v in enumerate(values):
        p.send(topic, key=f"k{i}".encode(), value=v)
    p.flush(timeout=60)
    p.close()
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    c.assign([TopicPartition(topic, 0)])
    got = consume(c, len(values), timeout=60)
    c.close()
    assert [m.value for m in got] == values


def test_auto_offset_reset_without_a_group(bootstrap, new_topic):
    topic = new_topic("kp-reset", partitions=1)
    p = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(5):
        p.send(topic, value=f"old-{i}".encode())
    p.flush(timeout=30)
    tp = TopicPartition(topic, 0)

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    c.assign([tp])
    assert [m.value for m in consume(c, 5, timeout=30)] == [f"old-{i}".encode() for i in range(5)]
    c.close()

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="latest")
    c.assign([tp])
    assert c.position(tp) == 5
    p.send(topic, value=b"new")
    p.flush(timeout=30)
    assert [m.value for m in consume(c, 1, timeout=30)] == [b"new"]
    # An offset out of range resets by the policy too (to the end, 6).
    c.seek(tp, 1_000_000)
    deadline = time.time() + 30
    while c.position(tp) != 6 and time.time() < deadline:
        c.poll(timeout_ms=200)
    assert c.position(tp) == 6
    p.send(topic, value=b"newer")
    p.flush(timeout=30)
    assert [m.value for m in consume(c, 1, timeout=30)] == [b"newer"]
    c.close()
    p.close()


def test_offsets_for_times(bootstrap, new_topic):
    topic = new_topic("kp-times", partitions=1)
    base = int(time.time() * 1000) - 100_000
    p = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(10):
        p.send(topic, value=str(i).encode(), timestamp_ms=base + i * 1000)
    p.flush(timeout=30)
    p.close()
    tp = TopicPartition(topic, 0)
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    found = c.offsets_for_times({tp: base + 5500})
    assert found[tp].offset == 6 and found[tp].timestamp == base + 6000
    assert c.offsets_for_times({tp: base + 999_999})[tp] is None
    assert c.beginning_offsets([tp]) == {tp: 0}
    assert c.end_offsets([tp]) == {tp: 10}
    c.close()


def test_message_too_large(bootstrap, new_topic):
    topic = new_topic("kp-big", partitions=1, config={"max.message.bytes": "20000"})
    p = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    p.send(topic, value=b"a" * 19_000).get(timeout=30)
    with pytest.raises(MessageSizeTooLargeError):
        p.send(topic, value=b"b" * 25_000).get(timeout=30)
    p.close()


def test_admin(bootstrap):
    a = KafkaAdminClient(bootstrap_servers=bootstrap)
    name = unique("kp-admin")
    a.create_topics([NewTopic(name, 2, 1, topic_configs={"retention.ms": "7200000"})])
    assert name in a.list_topics()
    (desc,) = a.describe_topics([name])
    assert desc["name"] == name and len(desc["partitions"]) == 2
    assert desc["topic_id"]
    res = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    entry = res["topic"][name]["retention.ms"]
    assert entry["value"] == "7200000"
    assert entry["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    cluster = a.describe_cluster()
    assert cluster["cluster_id"] and cluster["controller_id"] >= 0

    with pytest.raises(TopicAlreadyExistsError):
        a.create_topics([NewTopic(name, 1, 1)])
    with pytest.raises(InvalidConfigurationError):
        a.create_topics([NewTopic(unique("kp-bad"), 1, 1, topic_configs={"retention.ms": "x"})])
    with pytest.raises(InvalidPartitionsError):
        a.create_topics([NewTopic(unique("kp-bad"), 0, 1)])
    a.delete_topics([name])
    assert name not in a.list_topics()
    with pytest.raises(UnknownTopicOrPartitionError):
        a.delete_topics([name])
    a.close()


def test_unknown_topic(bootstrap):
    p = KafkaProducer(bootstrap_servers=bootstrap, max_block_ms=2000)
    with pytest.raises((KafkaTimeoutError, UnknownTopicOrPartitionError)):
        p.send(unique("kp-missing"), value=b"v").get(timeout=10)
    p.close()
