"""Compaction and retention observed through a Kafka client (librdkafka).

`run_edge_tests.sh` runs storage with retention and cleaner passes every
500 ms, so these tests wait seconds, not minutes.
"""

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

WAIT_S = 90


def read_all(bootstrap, topic, partitions):
    """Every record of the topic from the log start: {partition: [Message]}."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "log-cleanup-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out = {p: [] for p in range(partitions)}
    at_end = set()
    deadline = time.time() + 30
    while len(at_end) < partitions and time.time() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
            at_end.add(m.partition())
            continue
        out[m.partition()].append(m)
    consumer.close()
    assert len(at_end) == partitions, f"only {sorted(at_end)} read to the end"
    return out


def eventually(what, check, timeout=WAIT_S):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        ok, last = check()
        if ok:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: still not the case after {timeout}s: {last}")


def test_a_compacted_topic_keeps_the_latest_value_per_key(bootstrap, new_topic):
    keys, updates, deleted = 200, 20_000, 20
    topic = new_topic(
        "compacted",
        partitions=2,
        config={
            "cleanup.policy": "compact",
            "segment.bytes": "16384",
            "segment.ms": "300",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "1000",
        },
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    expected = {}
    for i in range(updates):
        k = i % keys
        # The last update of keys 0..deleted is a tombstone.
        value = None if (i + keys >= updates and k < deleted) else f"value {i}".encode()
        producer.produce(topic, key=f"key-{k}".encode(), value=value)
        expected[f"key-{k}".encode()] = value
        if i % 5000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    fillers = [0]

    def compacted():
        # New records roll the aged active segments and give the cleaner
        # fresh dirty data, as live traffic does.
        fillers[0] += 1
        for p in range(2):
            producer.produce(topic, key=b"filler", value=str(fillers[0]).encode(), partition=p)
        assert producer.flush(30) == 0
        consumed = read_all(bootstrap, topic, 2)
        latest, records, tombstones = {}, 0, 0
        for p, messages in consumed.items():
            offsets = [m.offset() for m in messages]
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), p
            for m in messages:
                records += 1
                tombstones += m.value() is None
                latest[m.key()] = m.value()
        latest.pop(b"filler", None)
        wrong = [k for k, v in expected.items() if v is not None and latest.get(k) != v]
        done = not wrong and tombstones == 0 and records <= keys + 10
        return done, (latest, f"{records} records, {tombstones} tombstones, {len(wrong)} keys wrong")

    latest, _ = eventually("compaction", compacted)
    assert len(latest) == keys - deleted
    assert all(f"key-{k}".encode() not in latest for k in range(deleted))


def test_a_compacted_topic_refuses_a_record_without_a_key(bootstrap, new_topic):
    topic = new_topic("compacted-keyless", config={"cleanup.policy": "compact"})
    producer = Producer({"bootstrap.servers": bootstrap, "retries": 0})
    errors = []
    # Separately: a refused record fails its whole batch, as in Kafka.
    producer.produce(topic, value=b"no key", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(30)
    producer.produce(topic, key=b"k", value=b"keyed", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(30)
    assert errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD, errors
    assert errors[1] is None, errors


def low_watermark(bootstrap, topic):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "log-cleanup-watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()


def test_retention_by_size_and_by_time_moves_the_log_start(bootstrap, new_topic):
    by_size = new_topic("retention-size", config={"segment.bytes": "4096", "retention.bytes": "16384"})
    by_time = new_topic("retention-time", config={"segment.ms": "200", "retention.ms": "60000"})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    hour_ago = int(time.time() * 1000) - 3_600_000
    for i in range(1000):
        producer.produce(by_size, key=str(i).encode(), value=b"x" * 100)
        # Old records: the segments holding them are past retention.ms.
        producer.produce(by_time, key=str(i).encode(), value=b"y" * 100, timestamp=hour_ago + i)
        if i % 100 == 0:
            assert producer.flush(30) == 0
    assert producer.flush(30) == 0
    time.sleep(0.3)
    # A fresh record seals the old ones' segment by age.
    producer.produce(by_time, key=b"now", value=b"fresh")
    assert producer.flush(30) == 0

    for topic, total in ((by_size, 1000), (by_time, 1001)):
        low, high = eventually(
            f"{topic}: log start moves",
            lambda t=topic: (low_watermark(bootstrap, t)[0] > 0, low_watermark(bootstrap, t)),
        )
        assert high == total and 0 < low < high, (topic, low, high)
        messages = read_all(bootstrap, topic, 1)[0]
        # The consumer from the beginning starts at the new log start, and
        # everything from there is intact and in order.
        assert messages[0].offset() >= low
        assert [m.offset() for m in messages] == list(range(messages[0].offset(), high))

    # The time-retained topic keeps the fresh record.
    assert read_all(bootstrap, by_time, 1)[0][-1].value() == b"fresh"
