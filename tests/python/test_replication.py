"""Replication through the Kafka edge with librdkafka (confluent-kafka).

A topic with replication factor 3 and min.insync.replicas=2 takes a
continuous stream from an idempotent acks=all producer while the storage
process leading one of its partitions is killed with SIGKILL and later
started again. Afterwards a consumer reads every acknowledged record at its
acknowledged offset, in produce order per partition, and — idempotence being
on — no record twice.

Needs separate storage processes: run_edge_tests.sh with
RUNNEL_TOPOLOGY=processes exports RUNNEL_STORAGE_CTL (kill/start node N)
and RUNNEL_COORDINATOR_ADDRESS.
"""

import os
import re
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import eventually, runnel_cli

CTL = os.environ.get("RUNNEL_STORAGE_CTL")
COORDINATOR = os.environ.get("RUNNEL_COORDINATOR_ADDRESS")
pytestmark = pytest.mark.skipif(
    not CTL or not COORDINATOR,
    reason="needs separate storage processes (run_edge_tests.sh with RUNNEL_TOPOLOGY=processes)",
)

PARTITION_LINE = re.compile(r"partition (\d+)\s+leader=(-?\d+)\s+epoch=(\d+)\s+replicas=\[([\d, ]*)\]\s+isr=\[([\d, ]*)\]")


def partitions(topic):
    """{partition: (leader, epoch, replicas, isr)} from `runnel topic describe`."""
    out = runnel_cli("topic", "describe", topic, "--coordinator", COORDINATOR)
    ids = lambda s: sorted(int(x) for x in s.split(",") if x.strip())  # noqa: E731
    return {
        int(m[1]): (int(m[2]), int(m[3]), ids(m[4]), ids(m[5]))
        for m in PARTITION_LINE.finditer(out)
    }


def storage(action, node):
    subprocess.run(f"{CTL} {action} {node}", shell=True, check=True, timeout=60)


class Stream(threading.Thread):
    """Produces values 0, 1, 2, ... round robin over the partitions until
    stopped; keeps every delivery report."""

    def __init__(self, bootstrap, topic, partitions):
        super().__init__(daemon=True)
        self.topic, self.partitions = topic, partitions
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 120000,
            }
        )
        self.acked, self.failed = [], []
        self.sent = 0
        self.stopping = threading.Event()

    def on_delivery(self, err, msg):
        if err is not None:
            self.failed.append(str(err))
        else:
            self.acked.append((msg.partition(), msg.offset(), int(msg.value())))

    def run(self):
        while not self.stopping.is_set():
            for _ in range(50):
                try:
                    self.producer.produce(
                        self.topic,
                        value=str(self.sent).encode(),
                        partition=self.sent % self.partitions,
                        on_delivery=self.on_delivery,
                    )
                    self.sent += 1
                except BufferError:
                    break
            self.producer.poll(0.01)
        assert self.producer.flush(150) == 0, "records still unsent after 150 s"

    def wait_acked(self, more, timeout=60):
        target = len(self.acked) + more
        eventually(f"{more} more acknowledged records", lambda: len(self.acked) >= target, timeout)


def read_all(bootstrap, topic, partitions, ends):
    """Every record of the topic up to the given end offsets: {partition: [(offset, value)]}."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{topic}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = {p: [] for p in range(partitions)}
    deadline = time.time() + 120
    while any(len(got[p]) < ends[p] for p in got) and time.time() < deadline:
        for m in c.consume(1000, timeout=1):
            if m.error() is None:
                got[m.partition()].append((m.offset(), int(m.value())))
    c.close()
    return got


def test_killing_a_storage_leader_loses_no_acknowledged_record(bootstrap, new_topic):
    parts = 3
    topic = new_topic("repl", partitions=parts, replication_factor=3, config={"min.insync.replicas": "2"})
    eventually("all replicas in sync", lambda: all(len(p[3]) == 3 for p in partitions(topic).values()), 60)
    victim = partitions(topic)[0][0]

    stream = Stream(bootstrap, topic, parts)
    stream.start()
    try:
        stream.wait_acked(3000)
        storage("kill", victim)
        eventually(
            "a new leader for partition 0",
            lambda: partitions(topic)[0][0] not in (-1, victim),
            60,
        )
        stream.wait_acked(3000)
        storage("start", victim)
        stream.wait_acked(2000)
    finally:
        stream.stopping.set()
        stream.join(180)
    eventually("the restarted node back in every ISR", lambda: all(len(p[3]) == 3 for p in partitions(topic).values()), 60)

    assert stream.failed == [], stream.failed[:5]
    acked = {}
    for p, offset, value in stream.acked:
        acked.setdefault(p, []).append((offset, value))
    ends = {p: max(o for o, _ in acked.get(p, [(-1, 0)])) + 1 for p in range(parts)}
    got = read_all(bootstrap, topic, parts, ends)
    for p in range(parts):
        log = dict(got[p])
        for offset, value in acked.get(p, []):
            assert log.get(offset) == value, f"{p}-{offset}: acknowledged {value}, found {log.get(offset)}"
        values = [v for _, v in sorted(got[p])]
        assert values == sorted(values), f"partition {p} out of produce order"
        assert len(values) == len(set(values)), f"partition {p} holds duplicates despite idempotence"
    print(f"{len(stream.acked)} acknowledged records checked; leader {victim} killed and restarted")
