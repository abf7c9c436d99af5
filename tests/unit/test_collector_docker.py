"""The collector reads container logs from Docker's own files, never through the engine.

Each test writes a containers folder the way Docker 20.10+ does: one folder
per container with `config.v2.json`, `hostconfig.json` and the json-file log
`ID-json.log` (one JSON object per line), rotated as json-file rotates it.
The real collector runs against it and the real Redis receives its lines.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest
import redis

from pyfilter.common import hosts
from pyfilter.common.addresses import parse_address, parse_network
from pyfilter.common.keys import Keys
from pyfilter.collector.sources import containers
from pyfilter.collector.sources.docker import DockerSource
from pyfilter.collector.sources.jsonfile import RAW_MAX, first_line_at, identity
from pyfilter.common.config import CollectorConfig, Source as SourceConfig
from pyfilter.common.messages import decode_batch

from .test_collector_support import HOST, Collector, position, settle, stream_lines, wait_for, wait_for_lines


class DockerFolder:
    """Docker's containers folder (/var/lib/docker/containers), written as the engine writes it."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(mode=0o710)
        self.clock = 0.0

    def create(self, name: str, image: str, labels: dict[str, str] | None = None,
               address: str | None = "172.18.0.5", prefix: int = 16, running: bool = True,
               driver: str = "json-file") -> str:
        cid = secrets.token_hex(32)
        folder = self.root / cid
        folder.mkdir(mode=0o710)
        networks = {"web_default": {
            "IPAMConfig": None, "Links": None, "Aliases": [name], "NetworkID": secrets.token_hex(32),
            "EndpointID": secrets.token_hex(32) if running else "",
            "Gateway": "172.18.0.1" if running else "", "IPAddress": address if running and address else "",
            "IPPrefixLen": prefix if running and address else 0, "IPv6Gateway": "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "MacAddress": "02:42:ac:12:00:05" if running else "", "DriverOpts": None}}
        config = {
            "StreamConfig": {}, "State": {"Running": running, "Paused": False, "Restarting": False,
                                          "OOMKilled": False, "Dead": False, "Pid": 4242 if running else 0,
                                          "ExitCode": 0, "Error": "", "StartedAt": "2026-11-21T20:19:20Z",
                                          "FinishedAt": "0001-01-01T00:00:00Z", "Health": None},
            "ID": cid, "Created": "2026-11-21T20:19:19Z", "Managed": False, "Path": "/docker-entrypoint.sh",
            "Args": [], "Config": {"Hostname": cid[:12], "Env": ["SECRET_TOKEN=never-read"], "Image": image,
                                   "Labels": labels or {}, "Cmd": ["nginx", "-g", "daemon off;"]},
            "Image": "sha256:" + secrets.token_hex(32),
            "NetworkSettings": {"Bridge": "", "SandboxID": "", "Ports": {}, "Networks": networks},
            "LogPath": str(folder / f"{cid}-json.log"), "Name": f"/{name}", "Driver": "overlay2",
            "OS": "linux", "RestartCount": 0, "HasBeenStartedBefore": True,
        }
        self._write(folder / "config.v2.json", json.dumps(config), 0o600)
        self._write(folder / "hostconfig.json", json.dumps(
            {"LogConfig": {"Type": driver, "Config": {"max-size": "10m", "max-file": "3"}},
             "NetworkMode": "web_default"}), 0o644)
        if driver == "json-file":
            self._write(self.log_path(cid), "", 0o640)
        return cid

    def log_path(self, cid: str) -> Path:
        return self.root / cid / f"{cid}-json.log"

    def log(self, cid: str, *texts: str, stream: str = "stdout", at: float | None = None) -> list[float]:
        """Append lines as Docker's json-file driver does; return their times."""
        times = []
        with open(self.log_path(cid), "a") as f:
            for text in texts:
                when = at if at is not None else self.tick()
                times.append(when)
                f.write(json.dumps({"log": text if text.endswith("\n") or not text else text + "\n",
                                    "stream": stream, "time": stamp(when)}, separators=(",", ":")) + "\n")
        return times

    def log_raw(self, cid: str, piece: str, stream: str = "stdout") -> None:
        """One piece of a line Docker cut (no newline at the end of `log`)."""
        with open(self.log_path(cid), "a") as f:
            f.write(json.dumps({"log": piece, "stream": stream, "time": stamp(self.tick())},
                               separators=(",", ":")) + "\n")

    def tick(self) -> float:
        """Now, as Docker stamps lines; strictly after the line before."""
        self.clock = max(time.time(), self.clock + 1e-6)
        return self.clock

    def rotate(self, cid: str, max_file: int = 3, compress: bool = False) -> None:
        """json-file's rotation at max-size: .1 -> .2 ..., the log -> .1, a new empty log."""
        for step in self.rotation(cid, max_file, compress):
            step()

    def rotation(self, cid: str, max_file: int = 3, compress: bool = False) -> list:
        """The rotation's file system calls, one step each, in json-file's order;
        `compress`: rotated names end in .gz, and `.1` is compressed last, then removed."""
        live = self.log_path(cid)
        ext = ".gz" if compress else ""
        oldest = Path(f"{live}.{max_file - 1}{ext}")
        steps = [oldest.unlink] if oldest.exists() else []
        steps += [lambda n=n: os.rename(f"{live}.{n}{ext}", f"{live}.{n + 1}{ext}")
                  for n in range(max_file - 2, 0, -1) if Path(f"{live}.{n}{ext}").exists()]
        steps += [lambda: os.rename(live, f"{live}.1"), lambda: self._write(live, "", 0o640)]
        if compress:
            steps += [lambda: self._compress(Path(f"{live}.1")), lambda: os.unlink(f"{live}.1")]
        return steps

    @staticmethod
    def _compress(path: Path) -> None:
        with gzip.open(f"{path}.gz", "wb") as out:
            out.write(path.read_bytes())

    def truncate(self, cid: str) -> None:
        """json-file with max-file 1: the log is emptied in place."""
        with open(self.log_path(cid), "r+") as f:
            f.truncate(0)

    def remove(self, cid: str) -> None:
        shutil.rmtree(self.root / cid)

    @staticmethod
    def _write(path: Path, text: str, mode: int) -> None:
        path.write_text(text)
        path.chmod(mode)


def stamp(when: float) -> str:
    """Docker's time: RFC 3339 in UTC with nanoseconds, trailing zeros dropped."""
    whole = datetime.fromtimestamp(int(when), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    nanos = f"{round((when - int(when)) * 1e9):09d}".rstrip("0")
    return f"{whole}.{nanos}Z" if nanos else f"{whole}Z"


@pytest.fixture
def docker(tmp_path) -> DockerFolder:
    return DockerFolder(tmp_path / "containers")


def containers_source(docker: DockerFolder, **options) -> dict:
    return {"name": "containers", "type": "docker", "paths": [str(docker.root)], **options}


def batches(redis_url: str) -> list:
    client = redis.Redis.from_url(redis_url)
    return [decode_batch(fields[b"m"]) for _, fields in client.xrange(Keys().lines(HOST))]


def published(redis_url: str) -> str | None:
    value = redis.Redis.from_url(redis_url).hget(Keys().own_addresses(HOST), hosts.field("containers"))
    return None if value is None else value.decode()


def started(redis_url: str, source: str = "containers") -> None:
    client = redis.Redis.from_url(redis_url)
    wait_for(lambda: client.hexists(Keys().checkpoint(HOST, source), "seen"), 10, "the source's first look")


# --- what goes out -----------------------------------------------------------

def test_lines_carry_their_container_program_and_stream_time(tmp_path, docker, redis_url):
    web = docker.create("web", "docker.io/library/nginx:1.25")
    with Collector(tmp_path, redis_url, [containers_source(docker)]).start():
        started(redis_url)
        out = docker.log(web, '198.51.100.7 - alice [21/Nov/2026:20:19:28 +0000] "GET / HTTP/1.1" 401 179')
        err = docker.log(web, '2026/11/21 20:19:28 [error] 29#29: *1 user "alice": password mismatch, '
                              'client: 198.51.100.7, server: localhost, request: "GET / HTTP/1.1", '
                              'host: "web"', stream="stderr")
        wait_for(lambda: len(stream_lines(redis_url)) == 2, 10, "both lines")
    sent = [b for b in batches(redis_url) if b.lines]  # one batch, or two if read between the writes
    assert {(b.source, b.program, b.container, b.rules) for b in sent} == {("containers", "nginx", "web", None)}
    lines = [line for b in sent for line in b.lines]
    assert [line.time for line in lines] == pytest.approx(out + err, abs=1e-6)
    assert lines[1].text.startswith('2026/11/21 20:19:28 [error] 29#29: *1 user "alice"')
    st, gen = os.stat(docker.log_path(web)), position(redis_url, "containers", docker.log_path(web))["gen"]
    assert lines[0].id == f"containers:{st.st_dev}:{st.st_ino}:{gen}:0"


def test_label_names_the_rules_that_read_a_container(tmp_path, docker, redis_url):
    app = docker.create("app", "registry.example:5000/team/app:3",
                        labels={"pyfilter.rules": "nginx-http-auth, http-auth-401,"})
    with Collector(tmp_path, redis_url, [containers_source(docker)]).start():
        started(redis_url)
        docker.log(app, "hello")
        wait_for_lines(redis_url, ["hello"])
    (batch,) = [b for b in batches(redis_url) if b.lines]
    assert batch.rules == ["nginx-http-auth", "http-auth-401"]
    assert batch.program is None and batch.container == "app"


def test_image_mapping_of_the_source_comes_before_the_built_in_one(tmp_path, docker, redis_url):
    proxy = docker.create("proxy", "example/edge-router:2")
    ignored = docker.create("cache", "nginx:1.25")
    source = containers_source(docker, images={"example/edge-*": "traefik", "nginx": ""})
    with Collector(tmp_path, redis_url, [source]).start():
        started(redis_url)
        docker.log(ignored, "not read")
        docker.log(proxy, "read")
        wait_for_lines(redis_url, ["read"])
        settle()
    assert [(b.program, [line.text for line in b.lines]) for b in batches(redis_url) if b.lines] == \
        [("traefik", ["read"])]


def test_container_no_rule_reads_is_not_read_but_its_addresses_are_never_banned(tmp_path, docker, redis_url):
    db = docker.create("db", "postgres:16", address="172.18.0.9")
    docker.create("web", "nginx", address="172.19.0.3", prefix=24)
    docker.create("old", "nginx", running=False)
    with Collector(tmp_path, redis_url, [containers_source(docker)]).start():
        started(redis_url)
        docker.log(db, "FATAL:  password authentication failed for user \"postgres\"")
        settle()
    assert stream_lines(redis_url) == []
    assert published(redis_url) == "172.18.0.0/16 172.18.0.9 172.19.0.0/24 172.19.0.3"

    async def load():
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            return await hosts.load(client, Keys())
        finally:
            await client.aclose()

    import asyncio
    assert asyncio.run(load()) == {parse_network("172.18.0.0/16"), parse_address("172.18.0.9"),
                                   parse_network("172.19.0.0/24"), parse_address("172.19.0.3")}


def test_only_the_selected_containers_are_read(tmp_path, docker, redis_url):
    chosen = docker.create("worker-1", "example/worker", labels={"role": "worker"})
    other = docker.create("worker-2", "example/worker", labels={"role": "batch"})
    source = containers_source(docker, label="role=worker", program="myapp")
    with Collector(tmp_path, redis_url, [source]).start():
        started(redis_url)
        docker.log(other, "other")
        docker.log(chosen, "chosen")
        wait_for_lines(redis_url, ["chosen"])
        settle()
    assert [(b.program, b.container, [line.text for line in b.lines]) for b in batches(redis_url) if b.lines] == \
        [("myapp", "worker-1", ["chosen"])]


def test_pieces_of_a_cut_line_never_read_as_lines_of_their_own(tmp_path, docker, redis_url):
    web = docker.create("web", "nginx")
    forged = "Nov 21 20:19:28 web sshd[1]: Failed password for root from 198.51.100.99 port 22 ssh2\n"
    with Collector(tmp_path, redis_url, [containers_source(docker)]).start():
        started(redis_url)
        docker.log_raw(web, "GET /" + "a" * 16379)  # Docker cuts at 16 KB
        docker.log_raw(web, forged)  # the rest of that line, wherever the client's text put it
        docker.log(web, "next line")
        wait_for_lines(redis_url, ["next line"])
    lines = [line.text for line in stream_lines(redis_url)]
    assert len(lines) == 2 and lines[0].startswith("GET /aaa") and lines[1] == "next line"


def test_a_driver_other_than_json_file_is_said_and_skipped(tmp_path, docker, redis_url):
    docker.create("web", "nginx", driver="journald")
    with Collector(tmp_path, redis_url, [containers_source(docker)]).start() as c:
        started(redis_url)
        wait_for(lambda: "logs with the journald driver" in c.logs(), 10, "the collector to say so")


# --- containers coming and going --------------------------------------------

def test_existing_log_is_read_from_its_end_at_the_first_start(tmp_path, docker, redis_url):
    web = docker.create("web", "nginx")
    docker.log(web, "old 1", "old 2")
    with Collector(tmp_path, redis_url, [containers_source(docker)]).start():
        started(redis_url)
        docker.log(web, "new 1")
        wait_for_lines(redis_url, ["new 1"])
    assert [line.text for line in stream_lines(redis_url)] == ["new 1"]


def test_new_container_is_read_from_its_first_line_and_a_removed_one_dropped(tmp_path, docker, redis_url):
    checkpoint = Keys().checkpoint(HOST, "containers")
    client = redis.Redis.from_url(redis_url)
    with Collector(tmp_path, redis_url, [containers_source(docker)]).start():
        started(redis_url)
        web = docker.create("web", "nginx", address="172.20.0.2")
        docker.log(web, "first", "second")
        wait_for_lines(redis_url, ["first", "second"])
        wait_for(lambda: "172.20.0.2" in (published(redis_url) or ""), 10, "the new container's address")
        fields = set(client.hkeys(checkpoint)) - {b"started", b"seen"}
        assert len(fields) == 1
        docker.log(web, "last words")
        docker.remove(web)
        wait_for_lines(redis_url, ["last words"])
        wait_for(lambda: not fields & set(client.hkeys(checkpoint)), 10, "its checkpoint to be forgotten")
        wait_for(lambda: published(redis_url) == "", 10, "its address to leave the never-ban list")
    assert [line.text for line in stream_lines(redis_url)] == ["first", "second", "last words"]


def test_container_created_while_the_collector_was_down_is_read_whole(tmp_path, docker, redis_url):
    collector = Collector(tmp_path, redis_url, [containers_source(docker)])
    with collector.start():
        started(redis_url)
        assert collector.stop() == 0
    web = docker.create("web", "nginx")
    docker.log(web, "while down 1", "while down 2")
    with collector.start():
        wait_for_lines(redis_url, ["while down 1", "while down 2"])


# --- rotation and restarts ---------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_rotation_loses_no_line_and_sends_none_twice(tmp_path, docker, redis_url, compress):
    web = docker.create("web", "nginx")
    expected = []
    with Collector(tmp_path, redis_url, [containers_source(docker)], batch_lines=50).start():
        started(redis_url)
        for round_ in range(4):
            # Rotated twice in a row, faster than the collector looks: a file
            # it never saw at the live name sits between the one it reads
            # and the new one. max-file 4 keeps all three.
            for part in ("a", "b"):
                texts = [f"round {round_}{part} line {i}" for i in range(120)]
                docker.log(web, *texts)
                docker.rotate(web, max_file=4, compress=compress)
                expected += texts
            wait_for_lines(redis_url, expected)
        docker.log(web, "after")
        expected.append("after")
        wait_for_lines(redis_url, expected)
    assert [line.text for line in stream_lines(redis_url)] == expected


def source_in_process(docker: DockerFolder, saved: dict[str, bytes] | None = None) -> tuple[DockerSource, object]:
    """The containers source built in this process (from the checkpoint `saved`, if
    any), after its first look; and its one followed container."""
    cfg = msgspec.convert(containers_source(docker), SourceConfig)
    source = DockerSource(cfg, CollectorConfig(), saved or {}, asyncio.Event())
    asyncio.run(source._look())
    (followed,) = source.followed.values()
    return source, followed


def read_to_end(followed) -> None:
    while followed.tail.read():
        pass


def drain(source: DockerSource, followed, rounds: int = 6) -> list[str]:
    """What the source's loop does with one container, a few rounds: read to the end, look for the next file."""
    texts = []
    for _ in range(rounds):
        read_to_end(followed)
        raw: list = []
        while followed.tail.take(10_000, raw, RAW_MAX, source.stats):
            pass
        texts += [line.text for line in source._decode(followed, raw)]
        source._at_end(followed)
    return texts


@pytest.mark.parametrize("compress", [False, True])
def test_the_file_after_the_one_read_is_found_whatever_moment_of_a_rotation_the_source_looks_at(
        tmp_path, monkeypatch, compress):
    """Deterministic form of a rare loss: json-file rotates (one rename at a time)
    while the source looks at the names of a container's files. Every moment a
    look can fall on is tried: the rotation's first `steps` calls run just before
    the source's `at`-th look at a name, the rest just before the next one. File
    times are all made equal: they must not matter."""
    real_stat = os.stat
    for at in range(9):
        for steps in range(8):
            docker = DockerFolder(tmp_path / f"containers-{at}-{steps}")
            web = docker.create("web", "nginx")
            for earlier in ("x", "y", "z"):  # .1 to .3 exist: each step of the rotation moves a file
                docker.log(web, earlier)
                docker.rotate(web, max_file=4, compress=compress)
            source, followed = source_in_process(docker)
            live = str(docker.log_path(web))
            docker.log(web, "a")
            assert drain(source, followed, rounds=1) == ["a"]
            docker.rotate(web, max_file=4, compress=compress)  # the file read -> .1; B is the live log
            docker.log(web, "b")
            texts = drain(source, followed, rounds=1)  # sees the rename: one more read, then the next file
            now = time.time_ns()
            for path in Path(live).parent.iterdir():
                os.utime(path, ns=(now, now))
            rotation = docker.rotation(web, max_file=4, compress=compress)
            looks = 0

            def stat_during_rotation(path, *args, **kwargs):
                nonlocal looks
                if str(path).startswith(live):
                    if looks == at:
                        for step in rotation[:steps]:
                            step()
                    elif looks == at + 1:
                        for step in rotation[steps:]:
                            step()
                    looks += 1
                return real_stat(path, *args, **kwargs)

            with monkeypatch.context() as patched:
                patched.setattr(os, "stat", stat_during_rotation)
                source._at_end(followed)
            if looks <= at + 1:  # the rotation ended after the look
                for step in rotation[steps if looks == at + 1 else 0:]:
                    step()
            texts += drain(source, followed, rounds=4)
            docker.log(web, "c")
            texts += drain(source, followed, rounds=2)
            assert texts == ["b", "c"], f"rotation steps {steps} before look {at}"
            followed.tail.close()


@pytest.mark.parametrize("max_file", [4, 2])  # 2: the copy of the file read is deleted too
def test_files_rotated_and_compressed_before_the_source_looked_again_are_read_from_their_copies(
        tmp_path, docker, max_file):
    web = docker.create("web", "nginx")
    source, followed = source_in_process(docker)
    docker.log(web, "a1", "a2")
    assert drain(source, followed) == ["a1", "a2"]
    docker.log(web, "a3")
    docker.rotate(web, max_file=max_file, compress=True)
    docker.log(web, "b1 in a file only ever seen compressed", "b2")
    docker.rotate(web, max_file=max_file, compress=True)
    docker.log(web, "c1")
    assert drain(source, followed) == ["a3", "b1 in a file only ever seen compressed", "b2", "c1"]
    followed.tail.close()


def test_logs_compressed_while_the_collector_was_stopped_are_read_from_their_copies(tmp_path, docker, redis_url):
    web = docker.create("web", "nginx")
    collector = Collector(tmp_path, redis_url, [containers_source(docker)])
    with collector.start():
        started(redis_url)
        docker.log(web, "before 1")
        wait_for_lines(redis_url, ["before 1"])
        collector.kill()
    docker.log(web, "while down 1: the rest of the file read")
    docker.rotate(web, max_file=5, compress=True)
    docker.log(web, "while down 2: a file only ever seen compressed")
    docker.rotate(web, max_file=5, compress=True)
    docker.log(web, "while down 3")
    with collector.start():
        wait_for_lines(redis_url, ["while down 3"])
        settle()
        docker.log(web, "after")
        wait_for_lines(redis_url, ["after"])
    assert [line.text for line in stream_lines(redis_url)] == [
        "before 1", "while down 1: the rest of the file read", "while down 2: a file only ever seen compressed",
        "while down 3", "after"]


def checkpointed(source: DockerSource, saved: dict[str, bytes]) -> dict[str, bytes]:
    """`saved` (the source's checkpoint hash) once its next batch is written, as the collector writes it."""
    for batch in source._batches({}):
        saved.update(batch.checkpoint)
        for key in batch.forget:
            saved.pop(key, None)
    return saved


@pytest.mark.parametrize("restarts_while_empty", [0, 1])
def test_a_log_still_empty_at_the_stop_and_compressed_while_down_is_read_without_its_predecessor_again(
        tmp_path, docker, restarts_while_empty):
    # Stopped just after a rotation, while the new log is empty: nothing of it
    # to know it by. While down it is written, rotated and compressed. The
    # file before it, compressed too, holds lines already sent: read again,
    # from the copy, they would count twice (under the copy's ids). The
    # source looked right after the rotation: those lines are as recent as
    # any slack allowed for Docker's clock. A restart while the log is still
    # empty must keep what the checkpoint knows of the file before.
    web = docker.create("web", "nginx")
    source, followed = source_in_process(docker)
    saved = checkpointed(source, {})
    docker.log(web, "before 1", "before 2")
    assert drain(source, followed) == ["before 1", "before 2"]
    saved = checkpointed(source, saved)
    docker.rotate(web, max_file=5, compress=True)
    assert drain(source, followed) == []
    assert followed.tail.key == identity(os.stat(docker.log_path(web))), "not reading the new log"
    for _ in range(restarts_while_empty):
        source.seen = time.time()
        saved = checkpointed(source, saved)
        followed.tail.close()
        source, followed = source_in_process(docker, saved)
        assert drain(source, followed) == []
    source.seen = time.time()
    saved = checkpointed(source, saved)
    followed.tail.close()

    docker.log(web, "while down 1")
    docker.rotate(web, max_file=5, compress=True)
    docker.log(web, "while down 2")
    source, followed = source_in_process(docker, saved)
    assert drain(source, followed) == ["while down 1", "while down 2"]
    followed.tail.close()


def test_restart_resumes_where_it_stopped_across_a_rotation(tmp_path, docker, redis_url):
    web = docker.create("web", "nginx")
    collector = Collector(tmp_path, redis_url, [containers_source(docker)])
    with collector.start():
        started(redis_url)
        docker.log(web, "before 1", "before 2")
        wait_for_lines(redis_url, ["before 1", "before 2"])
        collector.kill()
    docker.log(web, "while down 1")
    docker.rotate(web)
    docker.log(web, "while down 2")
    with collector.start():
        wait_for_lines(redis_url, ["while down 2"])
        settle()
    assert [line.text for line in stream_lines(redis_url)] == ["before 1", "before 2", "while down 1",
                                                               "while down 2"]


def test_truncated_log_is_read_again_from_its_start_in_a_new_generation(tmp_path, docker, redis_url):
    web = docker.create("web", "nginx")
    with Collector(tmp_path, redis_url, [containers_source(docker)]).start():
        started(redis_url)
        docker.log(web, "a fairly long line before the truncation", "and another one")
        wait_for_lines(redis_url, ["and another one"])
        docker.truncate(web)
        docker.log(web, "after")
        wait_for_lines(redis_url, ["after"])
    first, _, after = stream_lines(redis_url)
    assert after.text == "after"
    # The same offset, but not the same id: the line is not taken for a copy of the first.
    assert first.id.endswith(":0") and after.id.endswith(":0") and after.id != first.id


@pytest.mark.parametrize("when", ["while read", "while the collector was stopped"])
def test_log_rewritten_under_the_same_first_kib_is_read_again(tmp_path, docker, redis_url, when):
    """Only the last line read tells it from the file read before: its first
    KiB (what fingerprints a file) is the same, and it is no shorter."""
    web = docker.create("web", "nginx")
    live = docker.log_path(web)
    banner = "starting: " + "=" * 1100
    collector = Collector(tmp_path, redis_url, [containers_source(docker)])
    with collector.start():
        started(redis_url)
        docker.log(web, banner, at=1.0e9)
        docker.log(web, *(f"original line {i}" for i in range(10)))
        wait_for_lines(redis_url, ["original line 9"])
        if when != "while read":
            collector.kill()
        first = live.read_bytes().partition(b"\n")[0] + b"\n"
        rewritten = DockerFolder(tmp_path / "scratch")  # the new lines, as Docker writes them
        scratch = rewritten.create("scratch", "nginx")
        rewritten.log(scratch, *(f"REWRITTEN line {i:02}" for i in range(10)))
        fd = os.open(live, os.O_WRONLY)
        try:
            os.pwrite(fd, first + rewritten.log_path(scratch).read_bytes(), 0)
        finally:
            os.close(fd)
        if when != "while read":
            collector.start()
        wait_for_lines(redis_url, [f"REWRITTEN line {i:02}" for i in range(10)])


# --- what Docker's files say (no collector needed) -------------------------

@pytest.mark.parametrize("image, name", [
    ("nginx", "nginx"), ("nginx:1.25-alpine", "nginx"), ("docker.io/library/nginx:1.25", "nginx"),
    ("ghcr.io/owner/app:1.2@sha256:" + "0" * 64, "owner/app"), ("localhost:5000/team/web:2", "team/web"),
    ("vaultwarden/server:latest", "vaultwarden/server"), ("Traefik:v3", "traefik"),
])
def test_image_names_leave_out_registry_tag_and_digest(image, name):
    assert containers.image_name(image) == name


@pytest.mark.parametrize("image, program", [
    ("nginx:1.25", "nginx"), ("nginxinc/nginx-unprivileged", "nginx"), ("httpd:2.4", "apache2"),
    ("traefik:v3.1", "traefik"), ("caddy", "caddy"), ("gitea/gitea:1.22", "gitea"),
    ("codeberg.org/forgejo/forgejo:9", "gitea"), ("vaultwarden/server", "vaultwarden"),
    ("boky/postfix", "postfix/smtpd"), ("dovecot/dovecot", "dovecot"), ("mariadb:11", "mysqld"),
    ("bitwarden/identity", "bitwarden"), ("bitwardenrs/server", "vaultwarden"), ("redis:7", None),
])
def test_the_image_says_whose_log_a_container_holds(image, program):
    assert containers.program_for(image, {}) == program


def test_every_built_in_image_program_is_read_by_a_rule_of_its_own(catalog):
    from pyfilter.detector.matching import Matcher

    matcher = Matcher(catalog)
    unread = [program for _, program in containers.DEFAULT_IMAGES
              if not [r for r in matcher.rules_for(program) if "*" not in r.rule.programs]]
    assert unread == []


def test_the_rules_label_is_a_comma_separated_list():
    assert containers.label_rules({"pyfilter.rules": " sshd,, nginx-http-auth "}) == ["sshd", "nginx-http-auth"]
    assert containers.label_rules({}) is None


def test_the_first_line_since_a_time_is_found_without_reading_the_log(tmp_path):
    log = tmp_path / "c-json.log"
    base = 1_795_000_000.0
    log.write_text("".join(json.dumps({"log": f"line {i}\n", "stream": "stdout", "time": stamp(base + i)}) + "\n"
                           for i in range(1000)))
    starts = [0]
    for row in log.read_bytes().splitlines(keepends=True):
        starts.append(starts[-1] + len(row))
    fd = os.open(log, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for since, line in [(base - 5, 0), (base, 0), (base + 0.5, 1), (base + 500, 500),
                            (base + 999, 999), (base + 1000, 1000)]:
            assert first_line_at(fd, size, since) == starts[line], since
    finally:
        os.close(fd)


def test_container_files_give_name_image_labels_and_addresses_never_environment(docker):
    cid = docker.create("web", "nginx:1.25", labels={"a": "b"}, address="172.18.0.5")
    (found,) = containers.Folder(str(docker.root)).containers()
    assert (found.id, found.name, found.image, found.labels, found.addresses, found.networks) == \
        (cid, "web", "nginx:1.25", {"a": "b"}, ("172.18.0.5",), ("172.18.0.0/16",))
    assert "never-read" not in repr(found)
