"""`pyfilter ban/unban/list/show/stats/whitelist` against a real API process and Redis."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis
import redis.asyncio as aioredis

from pyfilter.cli import api as cli_api, main as cli
from pyfilter.common import messages
from pyfilter.common.keys import Keys
from tests.unit.apiserver import api_server  # noqa: F401  (fixture)
from tests.unit.apisupport import PREFIX, account_bans


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch, tmp_path):
    """The tests say where the API is; nothing from the environment or a checkout's compose/.env."""
    for name in ("PYFILTER_API_URL", "PYFILTER_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli_api, "CHECKOUT_ENV", tmp_path / "no-such.env")
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ban_list_show_unban_round_trip(api_server, capsys):
    url, token = ["--url", api_server.url], ["--token", api_server.token]
    code, out, _ = run(capsys, "ban", "198.51.100.7", "2001:db8::/64", "--duration", "2h",
                       "--reason", "port scan", *url, *token)
    assert code == 0 and "banned 2 address(es)" in out

    code, out, _ = run(capsys, "list", *url)
    assert code == 0 and "198.51.100.7" in out and "2001:db8::/64" in out and "port scan" in out
    assert "2 of 2 ban(s)" in out

    code, out, _ = run(capsys, "list", "--json", "--prefix", "198.51.100.0/24", *url)
    listed = json.loads(out)
    assert [b["address"] for b in listed["bans"]] == ["198.51.100.7"] and listed["total"] == 1

    code, out, _ = run(capsys, "show", "2001:db8::/64", *url)
    assert code == 0 and "port scan" in out and "manual" in out and "country" in out

    code, out, _ = run(capsys, "unban", "198.51.100.7", *url, *token)
    assert code == 0 and "198.51.100.7: unbanned" in out
    code, out, _ = run(capsys, "unban", "198.51.100.7", *url, *token)
    assert code == 1 and "was not banned" in out

    decisions = redis.Redis.from_url(api_server.redis_url).xrange(Keys(PREFIX).decisions)
    sent = [messages.decode_decision(f[b"m"]) for _, f in decisions]
    assert [(d.action, d.address) for d in sent] == [
        ("ban", "198.51.100.7"), ("ban", "2001:db8::/64"), ("unban", "198.51.100.7"), ("unban", "198.51.100.7")]


def test_exit_codes_scripts_can_trust(api_server, capsys, monkeypatch):
    url, token = ["--url", api_server.url], ["--token", api_server.token]
    assert run(capsys, "show", "198.51.100.50", *url)[0] == 1  # never banned
    code, _, err = run(capsys, "ban", "127.0.0.1", *url, *token)
    assert code == 3 and "409" in err and "loopback" in err
    code, _, err = run(capsys, "ban", "198.51.100.7", "--duration", "soon", *url, *token)
    assert code == 3 and "duration" in err
    code, _, err = run(capsys, "ban", "198.51.100.7", *url, "--token", "wrong")
    assert code == 3 and "401" in err
    code, _, err = run(capsys, "ban", "198.51.100.7", *url)  # no token anywhere
    assert code == 2 and "no API token" in err
    code, _, err = run(capsys, "list", "--url", "http://127.0.0.1:9")
    assert code == 4 and "cannot reach" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["list", "--limit", "many"])
    assert exc.value.code == 2


def test_url_and_token_from_the_environment_or_compose_env(api_server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PYFILTER_API_URL", api_server.url)
    env_file = tmp_path / "compose" / ".env"
    env_file.parent.mkdir()
    env_file.write_text(f"COMPOSE_FILE=x.yml\nPYFILTER_API_TOKEN={api_server.token}\n")
    assert run(capsys, "ban", "198.51.100.9")[0] == 0  # token found in ./compose/.env
    env_file.unlink()
    monkeypatch.setenv("PYFILTER_API_TOKEN", api_server.token)
    assert run(capsys, "unban", "198.51.100.9")[0] == 0


def test_bulk_ban_from_a_file(api_server, capsys, tmp_path):
    listing = tmp_path / "blocklist.txt"
    listing.write_text("# from a feed\n" + "\n".join(f"2001:db8:20::{i:x}" for i in range(1, 201)) + "\n")
    code, out, _ = run(capsys, "ban", "--file", str(listing), "--duration", "-1", "--url", api_server.url,
                       "--token", api_server.token)
    assert code == 0 and "banned 200" in out
    code, out, _ = run(capsys, "list", "--json", "--limit", "1000", "--url", api_server.url)
    bans = json.loads(out)["bans"]
    assert len(bans) == 200 and all(b["expires_at"] is None for b in bans)


def test_stats_and_whitelist_commands(api_server, capsys):
    url, token = ["--url", api_server.url], ["--token", api_server.token]
    run(capsys, "ban", "198.51.100.71", "198.51.100.7", *url, *token)
    code, out, _ = run(capsys, "stats", "--days", "3", *url)
    assert code == 0 and "total bans: 2" in out and "active: 2" in out and "top rules: manual 2" in out
    code, out, _ = run(capsys, "stats", "--json", *url)
    assert json.loads(out)["days"] == 10

    code, out, _ = run(capsys, "whitelist", "add", "198.51.100.64/27", "--reason", "office", *url, *token)
    assert code == 0 and "lifted 1 active ban(s)" in out
    code, out, _ = run(capsys, "whitelist", *url)
    assert code == 0 and "198.51.100.128/25" in out and "read-only" in out and "office" in out
    assert run(capsys, "whitelist", "remove", "198.51.100.64/27", *url, *token)[0] == 0
    assert run(capsys, "whitelist", "remove", "198.51.100.64/27", *url, *token)[0] == 1
    code, _, err = run(capsys, "whitelist", "remove", "198.51.100.128/25", *url, *token)
    assert code == 3 and "configuration file" in err
    assert run(capsys, "whitelist", "add", *url, *token)[0] == 2


def test_show_writes_a_clients_text_as_escapes_and_names_the_account(api_server, capsys):
    """A per-account ban names the account a client typed, and its lines hold it: on the
    operator's terminal its controls are escapes (common/shown.py), in --json as sent."""
    account = "\x1b]0;pwned\x07\x1b[2Jroot\u202e"
    attackers = ["198.51.100.31", "198.51.100.32"]

    async def ban() -> list[str]:
        client = aioredis.Redis.from_url(api_server.redis_url)
        try:
            return await account_bans(client, attackers, account, time.time())
        finally:
            await client.aclose()

    assert asyncio.run(ban()) == attackers
    url = ["--url", api_server.url]
    code, out, _ = run(capsys, "show", attackers[0], *url)
    assert code == 0 and attackers[0] in out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    # The window that decided it, the account and its evidence, as the admin page shows them.
    assert "window         account\n" in out
    assert "account        \\x1b]0;pwned\\x07\\x1b[2Jroot\\u202e\n" in out
    assert "addresses that failed on the account together (2):\n  198.51.100.31  198.51.100.32\n" in out
    assert r"Failed password for \x1b]0;pwned\x07\x1b[2Jroot\u202e from 198.51.100.31" in out
    code, out, _ = run(capsys, "show", "--json", attackers[0], *url)
    assert json.loads(out)["account"] == account


def test_show_of_a_network_ban_lists_its_member_bans(api_server, capsys):
    from tests.unit.test_network import detector, fail_once, widening

    members = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]

    async def ban() -> list[str]:
        client = aioredis.Redis.from_url(api_server.redis_url)
        try:
            return await fail_once(detector(client, widening()), members)
        finally:
            await client.aclose()

    assert asyncio.run(ban()) == members  # each banned; the third fills their /24 (network.py)
    code, out, _ = run(capsys, "show", "198.51.100.0/24", "--url", api_server.url)
    assert code == 0 and "window         network\n" in out and "account" not in out
    listed = out.split("member bans:\n", 1)[1].splitlines()[0].split()
    assert sorted(listed) == members
