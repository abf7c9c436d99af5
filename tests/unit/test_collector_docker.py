"""The collector follows container logs through the Docker engine, across a crash.

No registry is reachable here, so the test builds its own image when none is
there: one statically linked program (compiled with gcc) in an otherwise
empty image, imported with `docker import`. It takes about a second.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import uuid

import pytest

from .test_collector_support import Collector, settle, stream_lines, wait_for

docker = pytest.importorskip("docker")

IMAGE = "pyfilter-test-logger:1"

# Prints "<tag> <n>" lines, waits, prints more, then sleeps until stopped.
LOGGER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int count = atoi(argv[1]), pause_ms = atoi(argv[2]);
    for (int i = 0; i < count; i++) printf("first %d\n", i);
    fflush(stdout);
    usleep(pause_ms * 1000);
    for (int i = 0; i < count; i++) printf("second %d\n", i);
    fflush(stdout);
    for (;;) pause();
}
"""


@pytest.fixture(scope="module")
def client():
    try:
        engine = docker.from_env()
        engine.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def image(client, tmp_path_factory):
    try:
        client.images.get(IMAGE)
        return IMAGE
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("gcc") is None:
        pytest.skip("no local image to run and no gcc to build the tiny test image")
    folder = tmp_path_factory.mktemp("logger")
    (folder / "logger.c").write_text(LOGGER_C)
    built = subprocess.run(["gcc", "-static", "-O2", "-o", str(folder / "logger"), str(folder / "logger.c")],
                           capture_output=True, text=True)
    if built.returncode:
        pytest.skip(f"cannot build the static test program (libc6-dev missing?): {built.stderr[-300:]}")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        tar.add(folder / "logger", arcname="logger")
    repository, tag = IMAGE.split(":")
    client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag,
                                      changes=['ENTRYPOINT ["/logger"]'])
    return IMAGE


@pytest.fixture
def run(client, image):
    started = []

    def start(*args: str, **options):
        container = client.containers.run(image, list(args), detach=True, **options)
        started.append(container)
        return container

    yield start
    for container in started:
        container.remove(force=True)


def test_container_logs_arrive_once_across_a_crash(tmp_path, redis_url, run):
    label = f"pyfilter.test={uuid.uuid4().hex}"
    collector = Collector(tmp_path, redis_url, [{"name": "app", "type": "docker", "label": label}],
                          batch_lines=10)
    first = {f"first {i}" for i in range(25)}
    second = {f"second {i}" for i in range(25)}
    with collector.start() as c:
        c.first_run_recorded("app")
        container = run("25", "4000", labels=dict([label.split("=")]))
        wait_for(lambda: first <= {line.text for line in stream_lines(redis_url)}, 15, "the first lines")
        c.kill()
    # The container logs its second lines while the collector is down.
    wait_for(lambda: b"second 24" in container.logs(), 15, "the container's second lines")
    with collector.start():
        wait_for(lambda: second <= {line.text for line in stream_lines(redis_url)}, 15, "the second lines")
        settle(1.0)
    lines = stream_lines(redis_url)
    assert {line.text for line in lines} == first | second
    assert len(lines) == 50, "lines sent twice after the restart"
    assert all(line.id.startswith(container.id + ":") for line in lines)
    assert len({line.id for line in lines}) == 50


def test_container_followed_by_name_from_its_start(tmp_path, redis_url, run):
    name = f"pyfilter-test-{uuid.uuid4().hex[:8]}"
    container = run("5", "0", name=name)
    wait_for(lambda: b"second 4" in container.logs(), 15, "the container's lines")
    source = {"name": "app", "type": "docker", "container": name, "from_start": True}
    with Collector(tmp_path, redis_url, [source]).start():
        wait_for(lambda: len(stream_lines(redis_url)) >= 10, 15, "the lines")
        settle()
    assert [line.text for line in stream_lines(redis_url)] == (
        [f"first {i}" for i in range(5)] + [f"second {i}" for i in range(5)])
