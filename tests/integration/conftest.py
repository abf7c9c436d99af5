from __future__ import annotations

import os

import pytest

from tests.integration.stack import Stack, make_log_dir, running


@pytest.fixture(scope="module")
def stack():
    with running(Stack(project=f"pyfilter-it-{os.getpid()}", log_dir=make_log_dir(auth_log=True))) as s:
        yield s
