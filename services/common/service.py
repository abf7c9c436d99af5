"""What every service's entry point does: JSON logs, the config checked up front,
and a clean stop on SIGTERM (compose's stop) or SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

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
