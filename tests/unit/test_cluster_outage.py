"""A Redis Cluster none of whose nodes answers for a while: the services wait and go on.

When a Cluster client must learn the slots again (after a connection error)
and no node answers, redis-py raises RedisClusterException, not a
ConnectionError. CI met it once in the multi-host Cluster stack: a host's
user changed on every node (its connections closed) and the collector's
heartbeat, which stopped only on the errors it knew as transient, ended for
good; its container turned unhealthy. Here a cluster of this test's own is
stopped whole and started again.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from pyfilter.collector import main as collector_main
from pyfilter.collector.checkpoints import Committer
from pyfilter.collector.sources.base import Batch, Stats
from pyfilter.common import health, messages
from pyfilter.common.config import RedisConfig
from pyfilter.common.keys import Keys
from pyfilter.common.redisio import TRANSIENT, connect
from tests.conftest import Cluster

KEYS = Keys()


async def changed(path, since: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_mtime_ns > since):
        assert time.monotonic() < deadline, f"{path} not touched within {timeout} s"
        await asyncio.sleep(0.05)


def test_the_collector_beats_and_commits_again_once_a_cluster_that_stopped_answering_is_back(tmp_path, monkeypatch):
    beat = tmp_path / "heartbeat"
    monkeypatch.setattr(health, "BEAT_FILE", beat)
    monkeypatch.setattr(collector_main, "BEAT_EVERY", 0.1)
    (tmp_path / "cluster").mkdir()
    cluster = Cluster(tmp_path / "cluster")

    async def go():
        client = connect(RedisConfig(url=cluster.url, cluster=True))
        stop = asyncio.Event()
        heartbeat = asyncio.create_task(collector_main.heartbeat(client, stop))
        await changed(beat, 0)
        cluster.stop()
        with pytest.raises(TRANSIENT) as said:
            await client.ping()
        await asyncio.sleep(1)  # a few beats' time with no node answering
        assert not heartbeat.done(), heartbeat.exception()
        line = messages.Line("auth:1:web1:0", "sshd[1]: Failed password for root from 198.51.100.7 port 22")
        commit = asyncio.create_task(Committer(client, KEYS, "web1", 1000).commit(
            "auth", Batch([line], checkpoint={"offset": b"1"}), stats := Stats()))
        while stats.errors == 0:
            await asyncio.sleep(0.05)
        silent_since = beat.stat().st_mtime_ns
        for port in cluster.ports:
            cluster.start(port)
        await changed(beat, silent_since)
        await commit
        written = await client.xrange(KEYS.lines("web1"))
        checkpoint = await client.hget(KEYS.checkpoint("web1", "auth"), "offset")
        stop.set()
        await heartbeat
        await client.aclose()
        return said.value, stats, written, checkpoint

    try:
        said, stats, written, checkpoint = asyncio.run(go())
    finally:
        cluster.stop()
    assert "cannot be connected" in str(said)  # the error CI met, and now a transient one
    assert stats.lines == 1 and len(written) == 1 and checkpoint == b"1"
