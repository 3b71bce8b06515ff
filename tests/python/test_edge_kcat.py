"""kcat (Debian's, linked with its own librdkafka) against the runnel Kafka
edge: metadata, keyed produce with headers, consume, compression codecs."""

import json
import subprocess
from collections import defaultdict

import pytest

from conftest import unique


def run(kcat, bootstrap, args, stdin=None, timeout=120, check=True):
    result = subprocess.run(
        [kcat, "-b", bootstrap, *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kcat {args} failed ({result.returncode}): {result.stderr.decode()}")
    return result


def consume_json(kcat, bootstrap, topic, extra=()):
    out = run(kcat, bootstrap, ["-C", "-t", topic, "-o", "beginning", "-e", "-J", *extra]).stdout
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


def test_metadata(kcat, bootstrap, new_topic):
    topic = new_topic("kc-md", partitions=3)
    md = json.loads(run(kcat, bootstrap, ["-L", "-J", "-t", topic]).stdout)
    assert len(md["brokers"]) >= 1
    (t,) = md["topics"]
    assert t["topic"] == topic
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
    broker_ids = {b["id"] for b in md["brokers"]}
    assert all(p["leader"] in broker_ids for p in t["partitions"])


def test_keyed_records_with_headers_in_order(kcat, bootstrap, new_topic):
    topic = new_topic("kc-keyed", partitions=12)
    n, keys = 100_000, 1000
    seq = defaultdict(int)
    lines = []
    for i in range(n):
        key = f"key-{i % keys}"
        lines.append(f"{key}\t{key}:{seq[key]}")
        seq[key] += 1
    run(
        kcat,
        bootstrap,
        ["-P", "-t", topic, "-K", "\t", "-H", "src=kcat", "-X", "linger.ms=20"],
        stdin=("\n".join(lines) + "\n").encode(),
        timeout=300,
    )
    got = consume_json(kcat, bootstrap, topic)
    assert len(got) == n
    by_partition = defaultdict(list)
    key_partition = {}
    for m in got:
        by_partition[m["partition"]].append(m)
        assert key_partition.setdefault(m["key"], m["partition"]) == m["partition"]
    assert len(by_partition) == 12
    for part, msgs in by_partition.items():
        assert [m["offset"] for m in msgs] == list(range(len(msgs))), f"partition {part}"
        next_seq = defaultdict(int)
        for m in msgs:
            key, s = m["payload"].rsplit(":", 1)
            assert key == m["key"]
            assert int(s) == next_seq[key]
            next_seq[key] += 1
            assert m["headers"] == ["src", "kcat"]


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compression_round_trips(kcat, bootstrap, new_topic, codec):
    topic = new_topic(f"kc-codec-{codec}", partitions=1)
    values = [f"value {i} " * 10 for i in range(2000)]
    run(
        kcat,
        bootstrap,
        ["-P", "-t", topic, "-z", codec, "-X", "linger.ms=50"],
        stdin=("\n".join(values) + "\n").encode(),
    )
    got = consume_json(kcat, bootstrap, topic)
    assert [m["payload"] for m in got] == values


def test_consume_from_end_and_offset(kcat, bootstrap, new_topic):
    topic = new_topic("kc-offsets", partitions=1)
    run(kcat, bootstrap, ["-P", "-t", topic], stdin=b"a\nb\nc\nd\n")
    out = run(kcat, bootstrap, ["-C", "-t", topic, "-o", "2", "-e", "-f", "%o:%s\n"]).stdout
    assert out.decode().split() == ["2:c", "3:d"]
    out = run(kcat, bootstrap, ["-C", "-t", topic, "-o", "-1", "-e", "-f", "%o:%s\n"]).stdout
    assert out.decode().split() == ["3:d"]
    out = run(kcat, bootstrap, ["-C", "-t", topic, "-o", "end", "-e", "-f", "%s\n"]).stdout
    assert out.decode().split() == []


def test_unknown_topic(kcat, bootstrap):
    result = run(
        kcat,
        bootstrap,
        ["-C", "-t", unique("kc-missing"), "-e", "-m", "10"],
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert b"nknown" in result.stderr  # "Unknown topic or partition"
