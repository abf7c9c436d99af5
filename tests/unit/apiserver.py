"""A real API process (`python -m pyfilter.api`) on 127.0.0.1, over the test's redis-server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.unit.apisupport import CONFIG_WHITELIST, PREFIX, TOKEN


class Server(NamedTuple):
    url: str
    redis_url: str
    token: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_api(tmp_path: Path, redis_url: str, **geoip: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = tmp_path / "pyfilter.yaml"
    lines = [
        "host: api-host",
        f"redis: {{url: '{redis_url}', prefix: '{PREFIX}'}}",
        f"whitelist: ['{CONFIG_WHITELIST}']",
        f"api: {{listen: 127.0.0.1, port: {port}}}",
    ]
    if geoip:
        lines.append("geoip: {" + ", ".join(f"{k}: '{v}'" for k, v in geoip.items()) + "}")
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYFILTER_")}
    env.update(PYFILTER_CONFIG=str(config), PYFILTER_API_TOKEN=TOKEN)
    log = open(tmp_path / "api.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pyfilter.api"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the api exited with {proc.returncode}: {(tmp_path / 'api.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("the api did not answer /healthz within 20 s")


@pytest.fixture
def api_server(tmp_path: Path, redis_url: str):
    proc, url = start_api(tmp_path, redis_url)
    yield Server(url, redis_url, TOKEN)
    proc.terminate()
    proc.wait(10)
