"""Shared fixtures for the Kafka edge tests.

The tests run against a running edge: set RUNNEL_KAFKA_BOOTSTRAP=host:port
(see README.md; `run_edge_tests.sh` starts one and runs everything).
"""

import os
import shutil
import subprocess
import time
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

    def make(prefix="t", partitions=1, config=None, replication_factor=1):
        name = unique(prefix)
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    config=config or {},
                )
            ],
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


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def runnel_bin():
    """The runnel binary the test run uses (RUNNEL_BIN, else target/debug)."""
    path = os.environ.get("RUNNEL_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "debug", "runnel"
    )
    if not os.access(path, os.X_OK):
        pytest.skip(f"no runnel binary at {path}")
    return path


def runnel_cli(*args, timeout=30):
    """Runs `runnel <args>` and returns its stdout (fails on an error)."""
    out = subprocess.run([runnel_bin(), *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"runnel {' '.join(args)}: {out.stderr}"
    return out.stdout


def eventually(what, check, timeout, step=0.2):
    """Polls check() until it returns something truthy and returns that;
    fails saying `what` it waited for."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
