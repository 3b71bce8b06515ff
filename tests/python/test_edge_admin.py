"""Administration through the edge with real admin clients: CreatePartitions,
AlterConfigs (legacy, replaces the whole set), IncrementalAlterConfigs (SET,
DELETE, APPEND/SUBTRACT on list configs), validate_only and refused values,
DescribeLogDirs (kafka-python; confluent-kafka has no such call) and
DeleteRecords (both clients).

The tests hold whatever the topology: one edge or several, one storage node or
several (each edge reports every storage node's log directories)."""

import os
import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    OffsetSpec,
    ResourceType,
)
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KpTopicPartition
from kafka.admin import (
    AlterConfigOp,
    ConfigResourceType,
    KafkaAdminClient,
    NewPartitions as KpNewPartitions,
)
from kafka.admin import ConfigResource as KpConfigResource
from kafka.errors import InvalidPartitionsError, OffsetOutOfRangeError, UnknownTopicOrPartitionError

from conftest import runnel_bin, runnel_cli, unique


def error_code(future, timeout=30):
    """The Kafka error code a confluent-kafka admin future failed with."""
    with pytest.raises(KafkaException) as e:
        future.result(timeout=timeout)
    return e.value.args[0].code()


def partition_count(admin, topic):
    return len(admin.list_topics(topic, timeout=10).topics[topic].partitions)


def topic_configs(admin, topic):
    """{key: (value, source)} as DescribeConfigs reports it."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    return {k: (e.value, e.source) for k, e in entries.items()}


def set_on_topic(admin, topic):
    """The configs set on the topic (not defaults): {key: value}."""
    return {
        k: v
        for k, (v, source) in topic_configs(admin, topic).items()
        if source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    }


def test_create_partitions(bootstrap, admin, new_topic):
    topic = new_topic("cp", partitions=2)

    # validate_only checks and changes nothing.
    fs = admin.create_partitions([NewPartitions(topic, 4)], validate_only=True, operation_timeout=10)
    fs[topic].result(timeout=30)
    assert partition_count(admin, topic) == 2

    fs = admin.create_partitions([NewPartitions(topic, 4)], operation_timeout=10)
    fs[topic].result(timeout=30)
    assert partition_count(admin, topic) == 4

    # Fewer or as many partitions: INVALID_PARTITIONS; no topic: UNKNOWN_TOPIC_OR_PART.
    for count in (3, 4):
        fs = admin.create_partitions([NewPartitions(topic, count)], operation_timeout=10)
        assert error_code(fs[topic]) == KafkaError.INVALID_PARTITIONS
    missing = unique("cp-missing")
    fs = admin.create_partitions([NewPartitions(missing, 3)], operation_timeout=10)
    assert error_code(fs[missing]) == KafkaError.UNKNOWN_TOPIC_OR_PART

    # The new partitions take records and give them back.
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, value=b"in-a-new-partition", partition=3)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("g"), "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 3, 0)])
    msg = None
    deadline = time.time() + 30
    while msg is None and time.time() < deadline:
        msg = c.poll(1)
    c.close()
    assert msg is not None and msg.error() is None
    assert (msg.partition(), msg.offset(), msg.value()) == (3, 0, b"in-a-new-partition")


def incremental(admin, topic, entries, validate_only=False):
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    return admin.incremental_alter_configs([resource], validate_only=validate_only)[resource]


def test_incremental_alter_configs(admin, new_topic):
    topic = new_topic("iac", config={"retention.ms": "7200000"})
    SET, DELETE = AlterConfigOpType.SET, AlterConfigOpType.DELETE
    APPEND, SUBTRACT = AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT

    changes = [
        ConfigEntry("max.message.bytes", "2000000", incremental_operation=SET),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=APPEND),
    ]
    incremental(admin, topic, changes, validate_only=True).result(timeout=30)
    assert set_on_topic(admin, topic) == {"retention.ms": "7200000"}

    incremental(admin, topic, changes).result(timeout=30)
    assert set_on_topic(admin, topic) == {
        "retention.ms": "7200000",
        "max.message.bytes": "2000000",
        "cleanup.policy": "delete,compact",
    }

    incremental(
        admin,
        topic,
        [
            ConfigEntry("cleanup.policy", "delete", incremental_operation=SUBTRACT),
            ConfigEntry("retention.ms", None, incremental_operation=DELETE),
        ],
    ).result(timeout=30)
    configs = topic_configs(admin, topic)
    assert configs["cleanup.policy"] == ("compact", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    # Deleted: back to the default.
    assert configs["retention.ms"] == ("604800000", ConfigSource.DEFAULT_CONFIG.value)

    # Refused, and nothing changes: a bad value, an unknown key, APPEND to a
    # key that is not a list, SUBTRACT leaving an empty cleanup.policy.
    for entry in [
        ConfigEntry("retention.ms", "soon", incremental_operation=SET),
        ConfigEntry("retention.mss", "1", incremental_operation=SET),
        ConfigEntry("retention.ms", "1000", incremental_operation=APPEND),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=SUBTRACT),
    ]:
        assert error_code(incremental(admin, topic, [entry])) == KafkaError.INVALID_CONFIG, entry
    # validate_only refuses what the real change would refuse.
    bad = [ConfigEntry("min.insync.replicas", "0", incremental_operation=SET)]
    assert error_code(incremental(admin, topic, bad, validate_only=True)) == KafkaError.INVALID_CONFIG
    assert set_on_topic(admin, topic) == {"max.message.bytes": "2000000", "cleanup.policy": "compact"}

    missing = unique("iac-missing")
    entry = [ConfigEntry("retention.ms", "1000", incremental_operation=SET)]
    assert error_code(incremental(admin, missing, entry)) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_alter_configs_replaces_the_whole_set(admin, new_topic):
    topic = new_topic("ac", config={"retention.ms": "7200000"})

    def alter(configs, validate_only=False, name=topic):
        resource = ConfigResource(ResourceType.TOPIC, name, set_config=configs)
        return admin.alter_configs([resource], validate_only=validate_only)[resource]

    alter({"segment.ms": "3600000"}, validate_only=True).result(timeout=30)
    assert set_on_topic(admin, topic) == {"retention.ms": "7200000"}

    # Legacy AlterConfigs: keys not named go back to their defaults.
    alter({"segment.ms": "3600000"}).result(timeout=30)
    configs = topic_configs(admin, topic)
    assert configs["segment.ms"] == ("3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    assert configs["retention.ms"] == ("604800000", ConfigSource.DEFAULT_CONFIG.value)

    for bad in [{"segment.ms": "0"}, {"no.such.config": "1"}, {"message.timestamp.type": "Now"}]:
        assert error_code(alter(bad)) == KafkaError.INVALID_CONFIG, bad
        assert error_code(alter(bad, validate_only=True)) == KafkaError.INVALID_CONFIG, bad
    assert set_on_topic(admin, topic) == {"segment.ms": "3600000"}
    assert error_code(alter({"segment.ms": "1"}, name=unique("ac-missing"))) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_broker_configs_are_refused(admin):
    broker = min(admin.list_topics(timeout=10).brokers)
    resource = ConfigResource(ResourceType.BROKER, str(broker), set_config={"log.retention.ms": "1000"})
    assert error_code(admin.alter_configs([resource])[resource]) == KafkaError.INVALID_REQUEST
    entry = ConfigEntry("log.retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.BROKER, str(broker), incremental_configs=[entry])
    assert error_code(admin.incremental_alter_configs([resource])[resource]) == KafkaError.INVALID_REQUEST


def test_kafka_python_partitions_configs_and_log_dirs(bootstrap, new_topic):
    a = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        topic = new_topic("kp-adm", partitions=2)

        a.create_partitions({topic: KpNewPartitions(3)}, validate_only=True)
        assert len(a.describe_topics([topic])[0]["partitions"]) == 2
        a.create_partitions({topic: KpNewPartitions(3)})
        assert len(a.describe_topics([topic])[0]["partitions"]) == 3
        with pytest.raises(InvalidPartitionsError):
            a.create_partitions({topic: KpNewPartitions(2)})
        with pytest.raises(UnknownTopicOrPartitionError):
            a.create_partitions({unique("kp-missing"): KpNewPartitions(2)})

        def configs():
            res = a.describe_configs([KpConfigResource(ConfigResourceType.TOPIC, topic)])
            return {k: v["value"] for k, v in res["topic"][topic].items()}

        # IncrementalAlterConfigs (kafka-python's choice when the broker has it).
        changes = {"retention.ms": "3600000", "cleanup.policy": (AlterConfigOp.APPEND, "compact")}
        res = a.alter_configs([KpConfigResource(ConfigResourceType.TOPIC, topic, configs=changes)], validate_only=True)
        assert res == {"topic": {topic: "OK"}}
        assert configs() == {}
        a.alter_configs([KpConfigResource(ConfigResourceType.TOPIC, topic, configs=changes)])
        assert configs() == {"retention.ms": "3600000", "cleanup.policy": "delete,compact"}
        res = a.alter_configs([KpConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": "x"})])
        assert res["topic"][topic].startswith("[Error 40] InvalidConfigurationError"), res
        # Legacy AlterConfigs; kafka-python adds the keys already set so
        # nothing is reset by accident.
        a.alter_configs(
            [KpConfigResource(ConfigResourceType.TOPIC, topic, configs={"segment.ms": "60000"})], incremental=False
        )
        assert configs() == {"retention.ms": "3600000", "cleanup.policy": "delete,compact", "segment.ms": "60000"}

        # DescribeLogDirs: produce to partition 1, find its size in some
        # storage node's directory, as every edge (broker) reports it.
        p = KafkaProducer(bootstrap_servers=bootstrap.split(","))
        for i in range(50):
            # (The topic is compacted now: records need a key.)
            p.send(topic, key=b"k", value=b"x" * 1000, partition=1)
        p.flush(30)
        p.close()
        everything = a.describe_log_dirs()
        assert everything, "at least one broker answers"
        brokers = {b["broker_id"] for b in a.describe_cluster()["brokers"]}
        assert {r["broker"] for r in everything} == brokers
        for answer in everything:
            sizes = {}
            for log_dir in answer["log_dirs"]:
                assert log_dir["error_code"] == 0
                assert log_dir["log_dir"]
                for t in log_dir["topics"]:
                    if t["name"] == topic:
                        for part in t["partitions"]:
                            sizes[part["partition_index"]] = part["partition_size"]
            assert set(sizes) == {0, 1, 2}, answer
            assert sizes[1] > 50 * 1000 and sizes[0] == 0 and sizes[2] == 0
        only = a.describe_log_dirs({topic: [1]})
        for answer in only:
            found = [
                (t["name"], part["partition_index"])
                for d in answer["log_dirs"]
                for t in d["topics"]
                for part in t["partitions"]
            ]
            assert found == [(topic, 1)], answer
    finally:
        a.close()


def produce_values(bootstrap, topic, partition, values):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for v in values:
        p.produce(topic, value=v, partition=partition)
    assert p.flush(30) == 0


def consume_from(bootstrap, topic, partition, offset, count):
    """The first `count` (offset, value) pairs read from `offset` on; a
    position below the log start is reset to the earliest offset."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique("dr"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        got = []
        deadline = time.time() + 30
        while len(got) < count and time.time() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append((m.offset(), m.value()))
        return got
    finally:
        c.close()


def test_delete_records_with_confluent_kafka(bootstrap, admin, new_topic):
    topic = new_topic("dr", partitions=2, config={"segment.bytes": "4096"})
    produce_values(bootstrap, topic, 0, [b"v%d" % i for i in range(300)])
    produce_values(bootstrap, topic, 1, [b"w%d" % i for i in range(20)])

    fs = admin.delete_records(
        [TopicPartition(topic, 0, 123), TopicPartition(topic, 1, -1)], operation_timeout=10
    )
    assert fs[TopicPartition(topic, 0)].result(timeout=30).low_watermark == 123
    # OFFSET_END (-1): everything up to the high watermark.
    assert fs[TopicPartition(topic, 1)].result(timeout=30).low_watermark == 20

    earliest = admin.list_offsets(
        {TopicPartition(topic, 0): OffsetSpec.earliest(), TopicPartition(topic, 1): OffsetSpec.earliest()}
    )
    assert earliest[TopicPartition(topic, 0)].result(timeout=30).offset == 123
    assert earliest[TopicPartition(topic, 1)].result(timeout=30).offset == 20
    latest = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.latest()})
    assert latest[TopicPartition(topic, 0)].result(timeout=30).offset == 300

    # Records below the start are gone: a consumer asking for offset 5 is
    # reset to 123 and reads from there, in order.
    got = consume_from(bootstrap, topic, 0, 5, 177)
    assert got == [(i, b"v%d" % i) for i in range(123, 300)]

    # Never lowered; beyond the high watermark: OFFSET_OUT_OF_RANGE.
    fs = admin.delete_records([TopicPartition(topic, 0, 50)], operation_timeout=10)
    assert fs[TopicPartition(topic, 0)].result(timeout=30).low_watermark == 123
    fs = admin.delete_records([TopicPartition(topic, 0, 301)], operation_timeout=10)
    assert error_code(fs[TopicPartition(topic, 0)]) == KafkaError.OFFSET_OUT_OF_RANGE
    earliest = admin.list_offsets({TopicPartition(topic, 0): OffsetSpec.earliest()})
    assert earliest[TopicPartition(topic, 0)].result(timeout=30).offset == 123


def test_delete_records_with_kafka_python(bootstrap, new_topic):
    topic = new_topic("kp-dr", partitions=1)
    produce_values(bootstrap, topic, 0, [b"x%d" % i for i in range(100)])
    tp = KpTopicPartition(topic, 0)
    a = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    c = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False)
    try:
        result = a.delete_records({tp: 60})
        assert result[tp]["low_watermark"] == 60
        assert result[tp]["error_code"] == 0
        assert c.beginning_offsets([tp]) == {tp: 60}
        assert c.end_offsets([tp]) == {tp: 100}
        with pytest.raises(OffsetOutOfRangeError):
            a.delete_records({tp: 101})
        assert c.beginning_offsets([tp]) == {tp: 60}
    finally:
        c.close()
        a.close()
    assert consume_from(bootstrap, topic, 0, 0, 40) == [(i, b"x%d" % i) for i in range(60, 100)]


def test_delete_records_with_the_cli(bootstrap, admin, new_topic):
    coordinator = os.environ.get("RUNNEL_COORDINATOR_ADDRESS")
    if not coordinator:
        pytest.skip("needs RUNNEL_COORDINATOR_ADDRESS (set by run_edge_tests.sh)")
    topic = new_topic("cli-dr", partitions=2)
    produce_values(bootstrap, topic, 0, [b"c%d" % i for i in range(50)])
    produce_values(bootstrap, topic, 1, [b"d%d" % i for i in range(10)])
    out = runnel_cli(
        "topic", "delete-records", topic, "--partition", "0", "--before-offset", "30", "--coordinator", coordinator
    )
    assert out.splitlines() == [f"{topic}\tpartition=0\tlow_watermark=30"]
    out = runnel_cli("topic", "delete-records", topic, "--all-partitions", "--to-high-watermark", "--coordinator", coordinator)
    assert out.splitlines() == [
        f"{topic}\tpartition=0\tlow_watermark=50",
        f"{topic}\tpartition=1\tlow_watermark=10",
    ]
    earliest = admin.list_offsets({TopicPartition(topic, 1): OffsetSpec.earliest()})
    assert earliest[TopicPartition(topic, 1)].result(timeout=30).offset == 10
    # Beyond the high watermark: the partition's error, a failed exit.
    failed = subprocess.run(
        [runnel_bin(), "topic", "delete-records", topic, "--partition", "1", "--before-offset", "11",
         "--coordinator", coordinator],
        capture_output=True, text=True, timeout=30,
    )
    assert failed.returncode != 0
    assert "OffsetOutOfRange" in failed.stderr, failed.stderr
