from __future__ import annotations

import os
import shutil

import docker
import pytest

from tests.integration.stack import Stack, make_log_dir


@pytest.fixture(scope="module")
def stack():
    try:
        docker.from_env().ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"integration tests need a running Docker engine: {exc}")
    log_dir = make_log_dir()
    (log_dir / "auth.log").touch(mode=0o644)
    s = Stack(project=f"pyfilter-it-{os.getpid()}", log_dir=log_dir)
    s.up()
    try:
        yield s
    finally:
        s.down()
        if not os.environ.get("PYFILTER_KEEP_LOGS"):
            shutil.rmtree(log_dir, ignore_errors=True)
