"""Bans of the per-account window through the API: the list and the detail carry the window
kind, the account and the evidence (the addresses that failed on it together)."""

from __future__ import annotations

import time

from tests.unit.apisupport import account_bans, call

ATTACKERS = ["198.51.100.21", "198.51.100.22", "2001:db8::23"]


def test_ban_list_and_detail_name_the_account_and_the_evidence(redis_url):
    now = time.time()

    async def steps(client, redis):
        assert await account_bans(redis, ATTACKERS, "oracle", now, spared="198.51.100.24") == sorted(ATTACKERS)
        listed = await (await client.get("/api/v1/bans", params={"rule": "sshd"})).json()
        detail = await (await client.get("/api/v1/bans/2001:db8::23")).json()
        spared = await client.get("/api/v1/bans/198.51.100.24")
        return listed, detail, spared.status
    listed, detail, spared = call(redis_url, steps)
    assert sorted(b["address"] for b in listed["bans"]) == sorted(ATTACKERS)
    for ban in [*listed["bans"], detail, *detail["history"]]:
        assert (ban["window"], ban["account"]) == ("account", "oracle")
        assert sorted(ban["evidence"]) == sorted(ATTACKERS)
        assert "1 spared" in ban["reason"]
    assert spared == 404  # it logged in as oracle: never banned
