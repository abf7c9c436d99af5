"""The collector started as root keeps root only in a helper that lists Docker's folder.

Run as root (as CI runs the suite): the collector's start is replayed in a
child process that drops to `nobody`, as the image's collector drops to
`pyfilter`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from .test_collector_docker import DockerFolder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as the collector's container starts")

SCRIPT = r"""
import json, os, sys
from pyfilter.collector import privsep

folder, log = sys.argv[1], sys.argv[2]
privsep.split()
helper = privsep.helper()
out = {"uid": os.getuid(), "groups": sorted(os.getgroups())}
try:
    os.listdir(folder)
    out["lists_folder"] = True
except PermissionError:
    out["lists_folder"] = False
config = os.path.join(os.path.dirname(log), "config.v2.json")
try:
    open(config).read()
    out["reads_config"] = True
except PermissionError:
    out["reads_config"] = False
out["log"] = open(log).read()
out["containers"] = [(c.name, c.image, c.addresses) for c in helper.containers(folder)]
status = dict(line.split(":", 1) for line in open(f"/proc/{helper.pid}/status").read().splitlines())
out["helper"] = {k: status[k].split() for k in ("Uid", "CapEff", "CapPrm")}
print(json.dumps(out))
"""


@pytest.fixture
def docker():
    # A folder `nobody` can reach, as /var/lib/docker is reachable (pytest's is root's only).
    top = Path(tempfile.mkdtemp(prefix="pyfilter-privsep-"))
    top.chmod(0o755)
    yield DockerFolder(top / "containers")
    shutil.rmtree(top)


def test_only_the_helper_keeps_root_and_it_has_no_capability(docker):
    web = docker.create("web", "nginx", address="172.18.0.5")
    docker.log(web, "hello")
    env = {**os.environ, "PYFILTER_USER": "nobody"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(docker.root), str(docker.log_path(web))],
                         env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["uid"] != 0 and 0 in out["groups"]
    assert out["lists_folder"] is False and out["reads_config"] is False
    assert json.loads(out["log"])["log"] == "hello\n"  # a log opens by name through root's group
    assert out["containers"] == [["web", "nginx", ["172.18.0.5"]]]
    assert out["helper"]["Uid"][0] == "0"
    assert int(out["helper"]["CapEff"][0], 16) == 0 and int(out["helper"]["CapPrm"][0], 16) == 0


def test_without_a_user_to_become_nothing_is_split(docker):
    run = subprocess.run([sys.executable, "-c",
                          "import os; from pyfilter.collector import privsep; privsep.split(); "
                          "print(os.getuid(), privsep.helper())"],
                         env={k: v for k, v in os.environ.items() if k != "PYFILTER_USER"},
                         capture_output=True, text=True, timeout=30)
    assert run.stdout.split() == ["0", "None"]
