"""The collector waits for Redis, and for room in the stream, without dropping a line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from pyfilter.common.keys import Keys
from pyfilter.common.messages import decode_batch

from .test_collector_support import (
    HOST, Collector, file_source, settle, stream_lines, texts, wait_for, wait_for_lines, write,
)


def test_full_stream_waits_for_the_detectors_instead_of_trimming(tmp_path, redis_url):
    log = tmp_path / "app.log"
    log.touch()
    client = redis.Redis.from_url(redis_url)
    lines = [f"line {i}" for i in range(1500)]
    with Collector(tmp_path, redis_url, [file_source("app", log)], batch_lines=1, lines_maxlen=1000).start() as c:
        c.ready()
        write(log, *lines)
        wait_for(lambda: client.xlen(Keys().lines(HOST)) > 1000, what="a full stream")
        settle(0.5)
        assert client.xlen(Keys().lines(HOST)) == 1001  # it stopped writing: no trimming
        # A detector drains the stream (it deletes what it acknowledged).
        seen = texts(redis_url)
        ids = [entry_id for entry_id, _ in client.xrange(Keys().lines(HOST))]
        client.xdel(Keys().lines(HOST), *ids)
        wait_for(lambda: len(set(seen) | set(texts(redis_url))) == 1500, what="the rest of the lines")
    assert set(seen) | set(texts(redis_url)) == set(lines)


def test_redis_down_loses_no_line(tmp_path, redis_url):
    log = tmp_path / "app.log"
    log.touch()
    client = redis.Redis.from_url(redis_url)
    with Collector(tmp_path, redis_url, [file_source("app", log)]).start() as c:
        c.ready()
        write(log, "before")
        wait_for_lines(redis_url, ["before"])
        config = client.config_get("dir")["dir"]
        client.shutdown(nosave=True)  # Redis goes away
        write(log, "while redis is down 1", "while redis is down 2")
        settle(1.0)
        assert c.proc.poll() is None, "the collector exited while Redis was down"
        server = restart_redis(Path(config), redis_url)
        try:
            wait_for_lines(redis_url, ["while redis is down 1", "while redis is down 2"], timeout=15)
            assert "Redis failed while writing a batch" in c.logs()
            assert c.stop() == 0
        finally:
            server.terminate()
            server.wait(10)


def restart_redis(folder: Path, url: str) -> subprocess.Popen:
    """A new redis-server on the socket the fixture's one used (it has no data)."""
    sock = url.removeprefix("unix://")
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
                             "--dir", str(folder), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    wait_for(lambda: _pings(url), what="redis-server to start again")
    return proc


def _pings(url: str) -> bool:
    try:
        return redis.Redis.from_url(url).ping()
    except redis.ConnectionError:
        return False


def test_batches_hold_at_most_batch_lines(tmp_path, redis_url):
    log = tmp_path / "app.log"
    log.touch()
    with Collector(tmp_path, redis_url, [file_source("app", log)], batch_lines=7).start() as c:
        c.ready()
        write(log, *[f"l{i}" for i in range(100)])
        wait_for_lines(redis_url, [f"l{i}" for i in range(100)])
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(Keys().lines(HOST)) >= 15
    assert [line.text for line in stream_lines(redis_url)] == [f"l{i}" for i in range(100)]


def test_batches_carry_the_zone_their_source_writes_times_in(tmp_path, redis_url):
    log = tmp_path / "auth.log"
    log.touch()
    source = {**file_source("auth", log), "timezone": "America/New_York"}
    with Collector(tmp_path, redis_url, [source]).start() as c:
        c.ready("auth")
        write(log, "Nov 17 20:00:00 h sshd[1]: Failed password for root from 198.51.100.7 port 22")
        wait_for_lines(redis_url, ["Nov 17 20:00:00 h sshd[1]: Failed password for root from 198.51.100.7 port 22"])
    client = redis.Redis.from_url(redis_url)
    assert {decode_batch(fields[b"m"]).tz for _, fields in client.xrange(Keys().lines(HOST))} == {"America/New_York"}


def test_a_batch_its_checkpoint_and_own_addresses_are_committed_on_one_redis_and_on_cluster(any_redis_url):
    """On Cluster the stream, the checkpoint and the own addresses are in three slots:
    the commit writes them in turn (lines first), and every one arrives."""
    import asyncio

    from pyfilter.collector.checkpoints import Committer, load
    from pyfilter.collector.sources.base import Batch, Stats
    from pyfilter.common.messages import Line
    from tests.conftest import aclient

    keys = Keys()

    async def go():
        client = aclient(any_redis_url)
        committer, stats = Committer(client, keys, HOST, 1000), Stats()
        await committer.commit("app", Batch([Line("app:1:2:0", "first")], checkpoint={"f": b"6", "old": b"1"},
                                            own=["198.51.100.3"]), stats)
        await committer.commit("app", Batch([Line("app:1:2:6", "second")], checkpoint={"f": b"13"},
                                            forget=["old"]), stats)
        await committer.commit("app", Batch([], checkpoint={"seen": b"1"}), stats)
        # A forgotten file's identity taken by a new file, both in one batch: the new one's position stays.
        await committer.commit("app", Batch([], checkpoint={"reused": b"0"}, forget=["reused"]), stats)
        found = ([decode_batch(f[b"m"]).lines[0].text for _, f in await client.xrange(keys.lines(HOST))],
                 await load(client, keys, HOST, "app"), await client.hgetall(keys.own_addresses(HOST)),
                 await client.smembers(keys.hosts), committer.length, stats.lines)
        await client.aclose()
        return found

    stream, checkpoint, own, listed, length, counted = asyncio.run(go())
    assert stream == ["first", "second"] and length == 2 and counted == 2
    assert checkpoint == {"f": b"13", "seen": b"1", "reused": b"0"}
    assert own == {b"source:app": b"198.51.100.3"} and listed == {HOST.encode()}
