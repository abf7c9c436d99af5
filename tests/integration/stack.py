"""Bring the real stack up in containers for a test, and talk to it.

The stack is the project's own compose file (plus the air-gapped override
when the images were built that way) and `compose.test.yml`, under a project
name of its own, with a log folder, API port and token made for the test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_OVERRIDE = Path(__file__).with_name("compose.test.yml")
ISOLATED = Path(__file__).with_name("compose.isolated.yml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AIRGAPPED = os.environ.get("PYFILTER_AIRGAPPED") == "1"
BASE_IMAGE = "pyfilter-base:bookworm-4"


def compose_files(*extra: Path) -> list[Path]:
    """The single-host stack as `make up` runs it, plus the test's own overrides."""
    files = [ROOT / "compose/docker-compose.yml"]
    if AIRGAPPED:
        files.append(ROOT / "compose/airgapped.yml")
    return [*files, ISOLATED, TEST_OVERRIDE, *extra]


@dataclass
class Stack:
    project: str
    log_dir: Path
    files: list[Path] = field(default_factory=compose_files)
    api_port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    redis_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    # Docker's containers folder as the collector sees it. By default an empty
    # one: the tests' attackers are containers of this machine, and the
    # addresses of a host's containers are never banned.
    docker_dir: Path | None = None

    def __post_init__(self) -> None:
        self.docker = docker.from_env()
        self.own_docker_dir = self.docker_dir is None
        if self.docker_dir is None:
            self.docker_dir = Path(tempfile.mkdtemp(prefix="pyfilter-it-containers-"))
        self.env = {
            **os.environ,
            "PYFILTER_DOCKER_DIR": str(self.docker_dir),
            "PYFILTER_LOG_DIR": str(self.log_dir),
            "PYFILTER_API_PORT": str(self.api_port),
            "PYFILTER_API_TOKEN": self.token,
            "PYFILTER_REDIS_PASSWORD": self.redis_password,
            "PYFILTER_HOST": "target-host",
            # Health checks 2 s apart rather than the idle host's 30 s, so that
            # `up --wait` and the waits on health return soon.
            "PYFILTER_HEALTH_INTERVAL": "2s",
            # The journal's group, found as `make up` finds it.
            "PYFILTER_JOURNAL_GID": subprocess.run(
                [ROOT / "compose/journal-gid.sh", self.log_dir], capture_output=True, text=True).stdout.strip(),
        }

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        files = [arg for f in self.files for arg in ("-f", str(f))]
        cmd = ["docker", "compose", "-p", self.project, *files, *args]
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def up(self) -> None:
        self.compose("up", "-d", "--wait", "--wait-timeout", "120")

    def down(self) -> None:
        logs = self.compose("logs", "--no-color", check=False).stdout
        (self.log_dir.parent / f"{self.project}.log").write_text(logs)
        self.compose("down", "-v", "--remove-orphans", check=False)

    def container(self, service: str):
        return self.docker.containers.get(f"{self.project}-{service}-1")

    def exec(self, service: str, *cmd: str) -> tuple[int, str]:
        code, out = self.container(service).exec_run(list(cmd))
        return code, out.decode(errors="replace")

    def tcp_connects(self, service: str, host: str, port: int, timeout: float = 3.0) -> bool:
        code, _ = self.exec(service, "python", "-c",
                            f"import socket; socket.create_connection(('{host}', {port}), {timeout})")
        return code == 0

    def api(self, method: str, path: str, body: object | None = None,
            token: str | None = None, timeout: float = 10) -> tuple[int, object]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", data=data,
                                     method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")  # else the api answers 415
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def kernel_set(self, name: str = "ban4", enforcer: str = "enforcer") -> list[str]:
        code, out = self.exec(enforcer, "nft", "-j", "list", "set", "inet", "pyfilter", name)
        if code != 0:
            raise RuntimeError(f"nft list set failed: {out}")
        elements = []
        for item in json.loads(out)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                value = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
                elements.append(value if isinstance(value, str) else json.dumps(value))
        return elements


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll until `predicate()` is truthy; fail with `what` when time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def make_log_dir(auth_log: bool = False) -> Path:
    """A fresh folder for the collector to read; with an empty auth.log if asked."""
    # World-readable: the collector runs as an unprivileged user.
    path = Path(tempfile.mkdtemp(prefix="pyfilter-it-"))
    path.chmod(0o755)
    if auth_log:
        (path / "auth.log").touch(mode=0o644)
    return path


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """The stack up for the `with` block, then down (containers and volumes) and its log
    folder removed, unless PYFILTER_KEEP_LOGS is set. No Docker engine is an error."""
    try:
        stack.docker.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a running Docker engine: {exc}")
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        if stack.own_docker_dir:
            shutil.rmtree(stack.docker_dir, ignore_errors=True)
        if not os.environ.get("PYFILTER_KEEP_LOGS"):
            shutil.rmtree(stack.log_dir, ignore_errors=True)
