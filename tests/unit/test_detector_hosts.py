"""The detector reads every listed host's lines stream, and drains the single
stream of before per-host streams (an upgrade)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from pyfilter.common import messages

from .test_detector_observe import detector


def failures(host: str, address: str, first: int, n: int) -> bytes:
    lines = [messages.Line(f"auth:0:0:{i}", f"sshd[1]: Failed password for root from {address} port 22")
             for i in range(first, first + n)]
    return messages.encode(messages.LineBatch(host=host, source="auth", lines=lines, read_at=time.time()))


def test_failures_from_every_hosts_stream_and_the_old_single_stream_count_in_one_window(redis_url):
    async def go():
        d = detector(redis_url, maxretry=100)
        client = aioredis.Redis.from_url(redis_url)
        # Left by the version before per-host streams, with a batch a detector took and did not finish.
        await client.xgroup_create(d.keys.legacy_lines, "detect", id="0", mkstream=True)
        await client.xadd(d.keys.legacy_lines, {"m": failures("web1", "198.51.100.7", 0, 2)})
        await client.xreadgroup("detect", d.consumer, {d.keys.legacy_lines: ">"})
        await client.xadd(d.keys.legacy_lines, {"m": failures("web1", "198.51.100.7", 2, 1)})
        await client.sadd(d.keys.hosts, "web1", "web2")
        await client.xadd(d.keys.lines("web1"), {"m": failures("web1", "198.51.100.7", 10, 2)})
        await client.xadd(d.keys.lines("web2"), {"m": failures("web2", "198.51.100.7", 20, 3)})
        await d.resume()
        while await d.client.xlen(d.keys.legacy_lines) or any(
                [await client.xlen(d.keys.lines(h)) for h in ("web1", "web2")]):
            await d.step()
            await d.settle()
        d.next_hosts = 0
        await d.follow_hosts()
        streams = list(d.lines.streams)
        await d.forget_read()
        window = await client.zcard(d.keys.window("sshd", "198.51.100.7"))
        await d.client.aclose()
        await client.aclose()
        return window, streams, d.keys
    window, streams, keys = asyncio.run(go())
    assert window == 8
    assert streams == [keys.lines("web1"), keys.lines("web2")]  # the drained old stream is left


def test_a_host_listed_later_is_read_too(redis_url):
    async def go():
        d = detector(redis_url, maxretry=100)
        await d.resume()
        assert d.lines.streams == []
        await d.client.sadd(d.keys.hosts, "late")
        await d.client.xadd(d.keys.lines("late"), {"m": failures("late", "198.51.100.8", 0, 2)})
        while await d.client.xlen(d.keys.lines("late")):
            await d.step()
            await d.settle()
        await d.forget_read()
        window = await d.client.zcard(d.keys.window("sshd", "198.51.100.8"))
        await d.client.aclose()
        return window
    assert asyncio.run(go()) == 2

