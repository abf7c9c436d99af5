"""`pyfilter import pyfilter-v1`: the original PyFilter's config.json, SQLite file and Redis, in its own formats.

The original's behaviour is played by `original_bans` below, from its source
(py_filter.py): `re.findall`, the first match's groups, `time_format`, the
`request_time`/`failed_attempts` count and the instant flag. Ours is the real
detector (matcher and window script) over a real redis-server, with the
configuration the import wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import re
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis

from pyfilter.cli import api as cli_api, main as cli
from pyfilter.common import config as configuration, messages
from pyfilter.common.keys import Keys
from pyfilter.detector.main import Detector
from tests.unit.apiserver import api_server  # noqa: F401  (fixture)
from tests.unit.apisupport import CONFIG_WHITELIST, PREFIX

NOW = datetime(2026, 11, 21, 20, 30, tzinfo=timezone.utc).timestamp()
STAMP = r"([a-zA-Z]{3}\s+\d{1,2} \d{1,2}:\d{1,2}:\d{1,2})"
# The original's default ssh patterns (Config/config.default.json), the last one instant.
SSH = [
    STAMP + r".* Invalid user .* from (.*) port (.*)",
    STAMP + r".* Failed password for .* from (.*) port (.*)",
    STAMP + r".* Did not receive identification string from (.*) port (.*)",
    STAMP + r".* Received disconnect from (.*) port (.*):\d{0,4}: .*",
    STAMP + r".* Unable to negotiate with (.*) port .*",
    [STAMP + r".* error: maximum authentication attempts exceeded for .* from (.*) port .*", True],
]
IGNORED = "198.51.100.30"


def original_config(**settings) -> dict:
    return {
        "settings": {
            "database": "sqlite", "failed_attempts": 5, "deny_type": "REJECT", "request_time": 5,
            "ignored_ips": ["127.0.0.1", "123.456.789.1", IGNORED], "reload_iptables": True,
            "rules": {
                "ssh": {"log_file": "/var/log/auth.log", "regex_patterns": SSH, "time_format": "%b %d %H:%M:%S"},
                "mysql": {"log_file": "/var/log/mysql/error.log", "time_format": "%Y-%m-%d %H:%M:%S",
                          "regex_patterns": [r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) .* Access denied for "
                                             r"user '.*'@'(.*)' .*"]},
                "apache": {"log_file": "", "regex_patterns": [[r'(.*) .* .* \[(.*) \+0000\] "POST ({}) '
                                                              r'HTTP/1\.1" (\d+) .*', "urls"]],
                           "time_format": "%d/%b/%Y:%H:%M:%S", "urls": ["/login/"], "http_status_blocks": [200]},
                "nginx": {"log_files": "/var/log/nginx/access.log",
                          "regex_patterns": [[r'(.*) .* .* \[(.*) \+0000\] "POST ({}) HTTP/1\.1" (\d+) .*', "urls"]],
                          "time_format": "%d/%b/%Y:%H:%M:%S", "urls": ["/login/", "/admin/"],
                          "http_status_blocks": [405]},
                "myapp": {"log_file": "/var/log/myapp.log", "time_format": "%Y-%m-%d %H:%M:%S",
                          "regex_patterns": [
                              r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) login failed from (\d{1,3}(?:\.\d{1,3}){3})",
                              [r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) token forged by (\d{1,3}(?:\.\d{1,3}){3})",
                               True],
                              r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) .* bad user .* at (.*)",
                          ]},
            },
            **settings,
        },
        "sqlite": {"database": "PyFilter.db"},
        "redis": {"host": "127.0.0.1", "password": None, "database": 0,
                  "sync_bans": {"active": True, "name": "VPS-Lon-1", "check_time": 600}},
        "logging": {"active": True, "directory": "Logs"},
    }


def write_original(tmp_path: Path, config: dict) -> Path:
    """The original's layout: PyFilter/Config/config.json, its database beside Config/."""
    path = tmp_path / "PyFilter" / "Config" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch, tmp_path):
    for name in ("PYFILTER_API_URL", "PYFILTER_API_TOKEN", "PYFILTER_CONFIG", "PYFILTER_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(cli_api, "CHECKOUT_ENV", tmp_path / "no-such.env")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, str, dict]:
    """The original's usual configuration, imported once for the tests that only read the result."""
    tmp_path = tmp_path_factory.mktemp("v1")
    config = original_config()
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        for name in ("PYFILTER_CONFIG", "PYFILTER_REDIS_URL"):
            mp.delenv(name, raising=False)
        code = cli.main(["import", "pyfilter-v1", str(write_original(tmp_path, config)),
                         "--out", str(tmp_path / "out")])
    assert code == 0
    return tmp_path / "out", printed.getvalue(), config


# The original, as its source does it ------------------------------------------

def original_matches(rules: dict, rule: str, line: str) -> list[tuple[str, datetime, bool]]:
    """(address, time, instant) of each of the rule's patterns that finds something in the line."""
    web = rule in ("apache", "nginx")
    spec = rules[rule]
    found = []
    for entry in spec["regex_patterns"]:
        regex, instant = (entry, False) if isinstance(entry, str) else (entry[0], isinstance(entry[1], bool))
        if isinstance(entry, list) and isinstance(entry[1], str):
            regex = regex.format("|".join(spec[entry[1]]))
        hits = re.findall(regex, line)
        if not hits:
            continue
        groups = hits[0]
        address, stamp = (groups[0], groups[1]) if web else (groups[1], groups[0])
        if web and int(groups[3]) not in spec["http_status_blocks"]:
            continue
        found.append((address, datetime.strptime(stamp, spec["time_format"]), instant))
    return found


def original_bans(config: dict, lines: list[tuple[str, str]]) -> set[str]:
    """The addresses the original bans: an attempt is a failure within request_time of the
    one before (the first counts nothing, a gap does not reset), a ban at failed_attempts."""
    settings = config["settings"]
    state: dict[tuple[str, str], dict] = {}
    banned = set()
    for rule, line in lines:
        for address, when, instant in original_matches(settings["rules"], rule, line):
            if address in settings["ignored_ips"]:
                continue
            if instant:
                banned.add(address)
                continue
            ip = state.setdefault((rule, address), {"amount": 0, "last": None})
            last, ip["last"] = ip["last"], when
            if last is None or (when - last).total_seconds() > settings["request_time"]:
                continue
            ip["amount"] += 1
            if ip["amount"] == settings["failed_attempts"]:
                banned.add(address)
                del state[(rule, address)]
    return banned


# Ours: the detector with the imported configuration ------------------------------

SOURCE_OF = {"ssh": "auth", "mysql": "mysql-error", "nginx": "nginx-access", "myapp": "v1-myapp"}


def our_bans(out: Path, redis_url: str, lines: list[tuple[str, str]]) -> set[str]:
    settings = configuration.load(out / "pyfilter.yaml")
    settings.config.redis.url = redis_url
    sources = {s.name: s for s in settings.config.collector.sources}
    whitelist = [ipaddress.ip_network(n) for n in settings.config.whitelist]

    async def go() -> set[str]:
        detector = Detector(settings)
        found = set()
        for n, (rule, text) in enumerate(lines):
            source = sources[SOURCE_OF[rule]]
            batch = messages.LineBatch(host="web1", source=source.name, lines=[messages.Line(f"{source.name}:{n}", text)],
                                       read_at=NOW, tz="UTC", program=source.program)
            observed = detector.observe(batch, NOW, set(), whitelist)
            found |= {b.address for b in await detector.windows.record(observed, NOW)}
        await detector.client.aclose()
        return found

    return asyncio.run(go())


def stamp(offset: float, form: str) -> str:
    return datetime.fromtimestamp(NOW + offset, timezone.utc).strftime(form)


def sshd(offset: float, message: str) -> tuple[str, str]:
    return "ssh", f"{stamp(offset, '%b %d %H:%M:%S')} web1 sshd[{4000 + int(offset) % 1000}]: {message}"


def nginx(offset: float, address: str, request: str, status: int) -> tuple[str, str]:
    return "nginx", (f'{address} - - [{stamp(offset, "%d/%b/%Y:%H:%M:%S")} +0000] "{request}" {status} 12 "-" '
                     '"Mozilla/5.0"')


def mysql(offset: float, address: str) -> tuple[str, str]:
    return "mysql", (f"{stamp(offset, '%Y-%m-%d %H:%M:%S')} 140 [Warning] Access denied for user "
                     f"'root'@'{address}' (using password: YES)")


def myapp(offset: float, words: str) -> tuple[str, str]:
    return "myapp", f"{stamp(offset, '%Y-%m-%d %H:%M:%S')} {words}"


def burst(make, n: int, *args, start: float = -20) -> list[tuple[str, str]]:
    return [make(start + i, *args) for i in range(n)]


# Tests -----------------------------------------------------------------------------

def test_import_writes_a_configuration_that_validates(imported, capsys):
    out, report, _ = imported
    code, said, err = run(capsys, "config", "check", str(out / "pyfilter.yaml"))
    assert code == 0, err
    assert "sshd" in said and "sshd-instant" in said and "v1-nginx" in said and "mysqld-auth" in said

    settings = configuration.load(out / "pyfilter.yaml")
    sshd_rule = settings.rules["sshd"]
    assert (sshd_rule.window, sshd_rule.failed_attempts, sshd_rule.request_time) == ("consecutive", 5, 5)
    assert sshd_rule.mode == "ddos"  # the original counted scanners ("Did not receive identification")
    assert {r.verdict for r in settings.rules.values() if r.service != "pyfilter"} == {"reject"}
    assert settings.rules["sshd-instant"].window == "instant"
    assert settings.config.whitelist == ["127.0.0.1/32", f"{IGNORED}/32"]
    assert "apache" not in " ".join(settings.rules)  # no log file: the original never ran it

    assert "ssh: its pattern(s) 0, 1, 2, 3, 4, 5 are greedy" in report
    assert "replaced by sshd's" in report and "mysql: its pattern(s) 0 are greedy" in report
    assert "'123.456.789.1' is not an address" in report
    assert "database: sqlite (PyFilter.db)" in report and "bring the ban list over with --bans" in report
    assert "myapp: pattern 2 not imported: its address group (.*) takes any text" in report
    assert (out / "import-report.txt").read_text().strip() in report
    yaml_text = (out / "pyfilter.yaml").read_text()
    assert "# ssh: mapped onto catalog rule sshd (mode ddos)" in yaml_text
    assert "bad user" not in (out / "rules" / "v1-myapp.yaml").read_text()


def test_imported_rules_ban_what_the_original_would(imported, redis_url):
    out, _, config = imported
    lines = (
        burst(sshd, 6, "Failed password for root from 198.51.100.10 port 22 ssh2")
        + burst(sshd, 3, "Failed password for root from 198.51.100.11 port 22 ssh2")
        + burst(sshd, 6, "Did not receive identification string from 198.51.100.22 port 35836")
        + [sshd(-5, "error: maximum authentication attempts exceeded for root from 198.51.100.12 port 22 ssh2 [preauth]")]
        + burst(sshd, 6, f"Failed password for root from {IGNORED} port 22 ssh2")
        + burst(nginx, 6, "198.51.100.13", "POST /login/ HTTP/1.1", 405)
        + burst(nginx, 6, "198.51.100.14", "POST /login/ HTTP/1.1", 200)
        + burst(nginx, 6, "198.51.100.16", "GET /login/ HTTP/1.1", 405)
        + burst(mysql, 6, "198.51.100.15")
        + burst(myapp, 6, "login failed from 198.51.100.17")
        + [myapp(-3, "token forged by 198.51.100.18")]
        # slow: one failure every 10 s never makes an attempt in either
        + burst(sshd, 1, "Failed password for root from 198.51.100.19 port 22 ssh2", start=-40)
        + burst(sshd, 1, "Failed password for root from 198.51.100.19 port 22 ssh2", start=-30)
    )
    expected = {"198.51.100.10", "198.51.100.12", "198.51.100.22", "198.51.100.13", "198.51.100.15", "198.51.100.17",
                "198.51.100.18"}
    assert original_bans(config, lines) == expected
    assert our_bans(out, redis_url, lines) == expected


def test_an_address_planted_in_client_text_is_never_reported(imported, redis_url):
    """The client writes the text after "Their offer:" and after a disconnect's reason code;
    the original's greedy `.*` finds its words there and takes the planted address."""
    out, _, config = imported
    real, planted = "198.51.100.7", "198.51.100.66"
    hostile = (
        burst(sshd, 6, f"Unable to negotiate with {real} port 4243: no matching key exchange method found. "
                       f"Their offer: x Unable to negotiate with {planted} port 1")
        + burst(sshd, 6, f"Received disconnect from {real} port 4242:11: x Received disconnect from "
                         f"{planted} port 1:11: bye")
    )
    assert {a for rule, line in hostile for a, _, _ in original_matches(config["settings"]["rules"], rule, line)} \
        == {planted}
    assert planted in original_bans(config, hostile)
    # Ours reads the address sshd wrote: the client that failed to agree on a key exchange.
    assert our_bans(out, redis_url, hostile) == {real}


def test_shared_redis_becomes_our_redis_and_the_server_name_our_host(tmp_path, capsys):
    config = original_config(database="redis")
    config["redis"].update(host="2001:db8::6", password="secret", database=2)
    code, out, err = run(capsys, "import", "pyfilter-v1", str(write_original(tmp_path, config)),
                         "--out", str(tmp_path / "out"))
    assert code == 0, err
    settings = configuration.load(tmp_path / "out" / "pyfilter.yaml")
    assert settings.host == "VPS-Lon-1"  # sync_bans.name
    assert settings.config.redis.url == "redis://[2001:db8::6]:6379/2"
    assert "secret" not in (tmp_path / "out" / "pyfilter.yaml").read_text()
    assert "set PYFILTER_REDIS_PASSWORD" in out and "check_time (600 s) has no counterpart" in out


def test_bad_configuration_is_refused_and_nothing_written(tmp_path, capsys):
    config = original_config(failed_attempts="five")
    code, _, err = run(capsys, "import", "pyfilter-v1", str(write_original(tmp_path, config)),
                       "--out", str(tmp_path / "out"))
    assert code == 2 and "settings.failed_attempts: expected int, got str" in err
    assert not (tmp_path / "out").exists()

    config = original_config()
    config["settings"]["rules"]["ssh"]["regex_patterns"] = [["(a", True]]
    code, _, err = run(capsys, "import", "pyfilter-v1", str(write_original(tmp_path, config)),
                       "--out", str(tmp_path / "out"))
    assert code == 2 and "settings.rules.ssh.regex_patterns[0]: not a regular expression" in err
    assert not (tmp_path / "out").exists()


def test_an_existing_outdir_is_not_overwritten_without_force(tmp_path, capsys):
    path, out = write_original(tmp_path, original_config()), tmp_path / "out"
    out.mkdir()
    (out / "pyfilter.yaml").write_text("# mine\n")
    code, _, err = run(capsys, "import", "pyfilter-v1", str(path), "--out", str(out))
    assert code == 2 and "--force" in err and (out / "pyfilter.yaml").read_text() == "# mine\n"
    code, _, _ = run(capsys, "import", "pyfilter-v1", str(path), "--out", str(out), "--force")
    assert code == 0 and "mapped onto catalog rule sshd" in (out / "pyfilter.yaml").read_text()


def api_bans(url: str) -> dict[str, dict]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/v1/bans?limit=1000") as resp:
        return {b["address"]: b for b in json.loads(resp.read())["bans"]}


def test_bans_from_sqlite_keep_their_remaining_time(tmp_path, capsys, api_server):
    path = write_original(tmp_path, original_config())
    now = time.time()
    whitelisted = str(next(ipaddress.ip_network(CONFIG_WHITELIST).hosts()))  # the API refuses it
    with sqlite3.connect(tmp_path / "PyFilter" / "PyFilter.db") as db:  # the original's schema
        db.execute("CREATE TABLE banned_ip (id INTEGER PRIMARY KEY, ip text, time_banned integer, "
                   "server_name text, log_msg text, country text)")
        db.executemany("INSERT INTO banned_ip(ip, time_banned, server_name, log_msg, country) VALUES (?,?,?,?,?)", [
            ("198.51.100.20", now - 7200, "Server-1", "IP: 198.51.100.20 has been blacklisted ... via ssh.\n", ""),
            ("198.51.100.21", now - 3 * 86400, "Server-1", "old", ""),
            ("2001:db8::5", now - 600, "Server-1", "via nginx", ""),
            (IGNORED, now - 60, "Server-1", "ignored by the original", ""),
            (whitelisted, now - 60, "Server-1", "whitelisted here", ""),
            ("not-an-address", now - 60, "Server-1", "", ""),
        ])
    code, out, err = run(capsys, "import", "pyfilter-v1", str(path), "--bans", "--bantime", "1d",
                         "--url", api_server.url, "--token", api_server.token)
    assert code == 0, err
    bans = api_bans(api_server.url)
    assert set(bans) == {"198.51.100.20", "2001:db8::5"}
    # What was left of each day-long ban when it was written (give or take the run's seconds).
    assert bans["198.51.100.20"]["expires_at"] == pytest.approx(now - 7200 + 86400, abs=60)
    assert bans["2001:db8::5"]["expires_at"] == pytest.approx(now - 600 + 86400, abs=60)
    assert "PyFilter v1 ban on Server-1" in bans["198.51.100.20"]["reason"]
    assert "2 banned" in out and "1 expired" in out and "1 refused" in out
    assert f"refused {whitelisted}: {whitelisted} must not be banned: whitelisted" in out
    assert f"left out {IGNORED}" in out and "left out not-an-address" in out

    legacy = tmp_path / "first-version.db"  # the first versions kept the address alone
    with sqlite3.connect(legacy) as db:
        db.execute("CREATE TABLE banned_ip (ip text PRIMARY KEY)")
        db.execute("INSERT INTO banned_ip VALUES ('198.51.100.23')")
    code, out, err = run(capsys, "import", "pyfilter-v1", str(path), "--bans", "--database", str(legacy),
                         "--url", api_server.url, "--token", api_server.token)
    assert code == 0, err
    assert api_bans(api_server.url)["198.51.100.23"]["expires_at"] == pytest.approx(time.time() + 86400, abs=60)
    assert "1 had no recorded time" in out


def test_bans_from_redis_keep_their_remaining_time(tmp_path, capsys, api_server):
    config = original_config(database="redis")
    path = write_original(tmp_path, config)
    original = f"{api_server.redis_url}?db=1"  # the original's database, beside ours (db 0)
    v1 = redis.Redis.from_url(original, decode_responses=True)
    now = time.time()

    def local(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    v1.hset("198.51.100.40", mapping={"VPS-Lon-1": local(now - 3600), "reason": "via ssh",
                                       "banned_server": "VPS-Lon-1", "VPS-Par-2": local(now - 3600)})
    v1.hset("198.51.100.42", mapping={"VPS-Par-2": local(now - 2 * 86400), "reason": "old",
                                       "banned_server": "VPS-Par-2"})
    v1.hset("198.51.100.43", mapping={"PyFilter-Admin manual ban": local(now - 60), "reason": "by hand",
                                       "banned_server": "PyFilter-Admin manual ban"})
    v1.set("198.51.100.41", "Banned")  # the first versions: no time
    v1.lpush("latest_10_keys", "198.51.100.40 VPS-Lon-1")
    code, out, err = run(capsys, "import", "pyfilter-v1", str(path), "--bans", "--bantime", "1d",
                         "--from-redis", original, "--timezone", "UTC",
                         "--url", api_server.url, "--token", api_server.token)
    assert code == 0, err
    bans = api_bans(api_server.url)
    assert set(bans) == {"198.51.100.40", "198.51.100.41", "198.51.100.43"}
    assert bans["198.51.100.40"]["expires_at"] == pytest.approx(now - 3600 + 86400, abs=60)
    assert bans["198.51.100.41"]["expires_at"] == pytest.approx(now + 86400, abs=60)
    assert "on VPS-Lon-1" in bans["198.51.100.40"]["reason"] and "by hand" in bans["198.51.100.43"]["reason"]
    assert "1 expired" in out and "1 had no recorded time" in out
    # The original's data is only read.
    assert v1.hgetall("198.51.100.42")["reason"] == "old" and v1.dbsize() == 5
    records = redis.Redis.from_url(api_server.redis_url).keys(Keys(PREFIX).prefix + "*")
    assert records  # ours went to our database and prefix
