"""Shared fixtures for the Kafka edge tests.

The tests run against a running edge: set RUNNEL_KAFKA_BOOTSTRAP=host:port
(see README.md; `run_edge_tests.sh` starts one and runs everything).
"""

import os
import shutil
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic


@pytest.fixture(scope="session")
def bootstrap():
    address = os.environ.get("RUNNEL_KAFKA_BOOTSTRAP")
    if not address:
        pytest.fail(
            "RUNNEL_KAFKA_BOOTSTRAP is not set: start an edge, e.g. "
            "`tests/python/run_edge_tests.sh`, or "
            "`cargo run -p runnel -- dev` and export "
            "RUNNEL_KAFKA_BOOTSTRAP=127.0.0.1:9092",
            pytrace=False,
        )
    return address


@pytest.fixture(scope="session")
def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


@pytest.fixture(scope="session")
def kcat():
    path = shutil.which("kcat") or shutil.which("kafkacat")
    if not path:
        pytest.fail("kcat is not installed: apt-get install -y kcat", pytrace=False)
    return path


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def new_topic(admin):
    """Creates topics with unique names; deletes them after the test."""
    created = []

    def make(prefix="t", partitions=1, config=None):
        name = unique(prefix)
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=10,
        )
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for f in admin.delete_topics(created, operation_timeout=10).values():
            try:
                f.result(timeout=30)
            except Exception:  # already deleted by the test
                pass


@pytest.fixture
def new_group(admin):
    """Makes unique consumer-group ids; deletes the groups after the test
    (best effort: a group that still has members stays)."""
    made = []

    def make(prefix="g"):
        name = unique(prefix)
        made.append(name)
        return name

    yield make
    if made:
        for f in admin.delete_consumer_groups(made, request_timeout=10).values():
            try:
                f.result(timeout=30)
            except Exception:  # never used, deleted by the test, or not empty
                pass
