"""logtime.lua's expiries in log time, on a real redis-server.

Replay's ledger keeps every expiry in Lua tables and deletes a key when a
window call moves the clock past it. A window's keys are set to expire again
at each failure, so a key is listed once and moves to its latest expiry only
when the clock gets there: these tests set expiries later, earlier, cleared
and on missing keys, and check what the keys are at each step.
"""

from __future__ import annotations

import importlib.resources

import pytest
import redis

# A library of one clocked function (ARGV: now, then command words, "|"
# between commands) around logtime.lua, as logtime.py puts it around ledger.lua.
RUN = """
redis.register_function('run', function(keys, args)
  local words = {}
  for i = 2, #args + 1 do
    if i > #args or args[i] == '|' then
      if #words > 0 then redis.call(unpack(words)) end
      words = {}
    else
      words[#words + 1] = args[i]
    end
  end
  return 1
end)
"""


@pytest.fixture
def client(redis_url):
    clock = importlib.resources.files("pyfilter.common").joinpath("logtime.lua").read_text()
    code = f"#!lua name=logtime_test\nlocal CLOCKED = {{run = true}}\n{clock}\n{RUN}"
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    c.function_load(code, replace=True)
    yield c
    c.close()


def run(client, now: float, *commands: str) -> None:
    words: list[str] = []
    for command in commands:
        words += [*command.split(), "|"]
    client.fcall("run", 0, str(now), *words)


def test_a_key_set_to_expire_later_lives_until_its_latest_expiry(client):
    run(client, 100, "SET k v", "EXPIRE k 10")  # due 110
    run(client, 105, "EXPIRE k 20")  # due 125
    run(client, 111)
    assert client.get("k") == "v"
    run(client, 124.5)
    assert client.get("k") == "v"
    run(client, 126)
    assert client.get("k") is None


def test_a_key_set_to_expire_sooner_goes_at_its_new_expiry(client):
    run(client, 100, "SET k v", "EXPIRE k 50")  # due 150
    run(client, 101, "EXPIRE k 5")  # due 106
    run(client, 107)
    assert client.get("k") is None


def test_many_expiries_of_one_key_move_it_along(client):
    run(client, 0, "SET k v")
    for now in range(0, 300, 7):
        run(client, now, "EXPIRE k 30")
        assert client.get("k") == "v"
    run(client, 294 + 30 + 1)
    assert client.get("k") is None


def test_a_key_without_its_expiry_stays(client):
    run(client, 100, "SET a v", "EXPIRE a 10", "SET b v", "EXPIRE b 10")
    run(client, 101, "PERSIST a", "SET b w")  # SET without EX: no expiry either
    run(client, 200)
    assert client.get("a") == "v" and client.get("b") == "w"


def test_a_deleted_key_made_again_takes_its_new_expiry(client):
    run(client, 100, "SET k v", "EXPIRE k 10", "DEL k")
    run(client, 105, "SET k w", "EXPIRE k 100")  # due 205
    run(client, 150)
    assert client.get("k") == "w"
    run(client, 206)
    assert client.get("k") is None


def test_an_expiry_of_a_missing_key_is_replaced_by_the_one_set_with_it(client):
    # ledger.lua sets a key's expiry in the call that writes it: an EXPIRE of
    # a missing key (scheduled without asking) gives way to that one.
    run(client, 100, "EXPIRE k 5")  # missing: due 105 all the same
    run(client, 102, "RPUSH k x", "EXPIRE k 60")  # due 162
    run(client, 110)
    assert client.lrange("k", 0, -1) == ["x"]
    run(client, 163)
    assert client.exists("k") == 0


def test_keys_due_in_one_second_go_by_their_own_time(client):
    run(client, 100, "SET a v", "EXPIRE a 10", "SET b v", "PEXPIRE b 10500")  # 110, 110.5
    run(client, 110.2)
    assert client.get("a") is None and client.get("b") == "v"
    run(client, 110.6)
    assert client.get("b") is None


def test_a_key_moved_to_a_later_expiry_holds_up_no_other(client):
    run(client, 100, "SET a v", "EXPIRE a 10", "SET b v", "EXPIRE b 50")  # 110, 150
    run(client, 105, "EXPIRE a 200")  # a: 305, still listed at 110
    run(client, 160)
    assert client.get("a") == "v" and client.get("b") is None
