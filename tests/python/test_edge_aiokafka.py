"""aiokafka (asyncio) against the edge: produce keyed records with headers,
read them back in order without a consumer group, and look up offsets."""

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition


def test_aiokafka_round_trip(bootstrap, new_topic):
    topic = new_topic("aio", partitions=3)
    count = 3_000

    async def run():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="gzip")
        await producer.start()
        try:
            pending = []
            for i in range(count):
                key = f"key-{i % 97}".encode()
                delivery = await producer.send(
                    topic, value=f"value-{i}".encode(), key=key, headers=[("n", str(i).encode())]
                )
                pending.append((delivery, key, i))
            await producer.flush()
            sent = {}
            for delivery, key, i in pending:
                meta = await delivery
                sent.setdefault(meta.partition, []).append((meta.offset, key, i))
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(3)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            got = {}
            deadline = time.monotonic() + 60
            while sum(len(v) for v in got.values()) < count and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=1000)
                for tp, records in batches.items():
                    for r in records:
                        n = int(dict(r.headers)["n"])
                        assert r.value == f"value-{n}".encode()
                        got.setdefault(tp.partition, []).append((r.offset, r.key, n))
            end = await consumer.end_offsets(partitions)
            start = await consumer.offsets_for_times({tp: 0 for tp in partitions})
        finally:
            await consumer.stop()
        return sent, got, end, start

    sent, got, end, start = asyncio.run(run())
    assert sum(len(v) for v in got.values()) == count
    for partition, records in sent.items():
        # Everything arrives, in produce order, at the acknowledged offsets.
        assert got[partition] == records
        assert end[TopicPartition(topic, partition)] == records[-1][0] + 1
        assert start[TopicPartition(topic, partition)].offset == 0
