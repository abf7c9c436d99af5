from __future__ import annotations

import os

import pytest

from tests.integration.stack import Stack, make_log_dir, running


def pytest_collection_modifyitems(config, items):
    """A test marked `profiles(...)` is not made for the other profiles of its `hosts`
    stack: a Sentinel failover has no case on a Cluster without replicas (not a skip)."""
    other = [item for item in items
             if (mark := item.get_closest_marker("profiles")) is not None
             and getattr(item, "callspec", None) is not None
             and item.callspec.params.get("hosts") not in mark.args]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item not in other]


@pytest.fixture(scope="module")
def stack():
    with running(Stack(project=f"pyfilter-it-{os.getpid()}", log_dir=make_log_dir(auth_log=True))) as s:
        yield s
