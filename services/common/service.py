"""What every service's entry point does: JSON logs, the config checked up front,
a clean stop on SIGTERM (compose's stop) or SIGINT, and long-running tasks watched."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine

from pyfilter.common import log
from pyfilter.common.config import ConfigError, Settings, load


def stop_on_signals(stopping: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)


def run(service: str, main: Callable[[Settings], Awaitable[int | None]], rules: bool = True) -> int:
    """Load the configuration (`rules=False`: without the rule catalog) and run
    `main`; exit 2 with the config's error if it is bad."""
    logger = log.setup(service)
    try:
        settings = load(rules=rules)
    except ConfigError as exc:
        logger.error(str(exc))
        return 2
    return asyncio.run(main(settings)) or 0


class Tasks:
    """A service's tasks that run until `stop` is set. One that ends before (an error
    nobody planned for, or a return) is logged at once with its traceback and stops the
    service, which exits 1 (`failed`): Docker starts it again, and it resumes from what
    Redis holds. Unwatched, such a task ended without a word: a collector whose
    heartbeat had ended turned unhealthy, and nothing said why."""

    def __init__(self, stop: asyncio.Event, logger: logging.Logger):
        self.stop, self.logger = stop, logger
        self.running: list[asyncio.Task] = []
        self.failed = False

    def start(self, work: Coroutine, name: str) -> asyncio.Task:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._ended)
        self.running.append(task)
        return task

    async def wait(self, timeout: float | None = None) -> set[asyncio.Task]:
        """Until every task has ended (at most `timeout` seconds); those still running."""
        _, pending = await asyncio.wait(self.running, timeout=timeout)
        return pending

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def _ended(self, task: asyncio.Task) -> None:
        if task.cancelled() or self.stop.is_set():
            return
        error = task.exception()
        self.logger.error(f"{task.get_name()} ended unexpectedly; stopping so that the service is restarted",
                          exc_info=(type(error), error, error.__traceback__) if error else None,
                          extra={"task": task.get_name()})
        self.failed = True
        self.stop.set()
