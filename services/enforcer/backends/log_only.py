"""A backend that touches no firewall: it logs what it would do and remembers it.

For trying PyFilter out (a dry run), and for hosts where the enforcer has no
NET_ADMIN. Bans live in memory with their deadlines, so `list()` and
`sync()` behave as with a kernel, and expire the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pyfilter.enforcer.backends.base import Backend, Ban, Inspection, Target, parse_ban_key, target_text

log = logging.getLogger("pyfilter.enforcer.log_only")

# One log line per target up to this many per call; a summary line beyond.
_DETAIL_LIMIT = 20


class LogOnlyBackend(Backend):
    name = "log-only"

    def __init__(self, clock=time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._deadlines: dict[str, float | None] = {}  # ban key -> monotonic deadline

    async def _init(self) -> None:
        log.info("log-only backend: no firewall is changed; bans are only logged")

    async def _inspect(self) -> Inspection:
        return Inspection(None, False, [], False, {"(memory)": sum(1 for d in self._deadlines.values() if d is None or d > self._clock())},
                          ["the enforcer runs log-only: bans are logged, nothing is blocked "
                           "(set enforcer.backend to nftables or iptables)"])

    async def _ban(self, bans: Sequence[Ban]) -> None:
        now = self._clock()
        for ban in bans:
            text = ban.key
            self._deadlines[text] = None if ban.timeout is None else now + ban.timeout
            if len(bans) <= _DETAIL_LIMIT:
                # The dry run's own output: the message reads as the action would.
                log.info("would ban %s for %s", text, _duration(ban.timeout),
                         extra={"address": target_text(ban.target), "timeout": ban.timeout})
        if len(bans) > _DETAIL_LIMIT:
            log.info("would ban many targets", extra={"targets": len(bans)})

    async def _unban(self, targets: Sequence[Target]) -> None:
        # Every scope the targets are banned in.
        lifted = {target_text(t) for t in targets}
        entries = []
        for key in self._deadlines:
            target, scope = parse_ban_key(key)
            if target_text(target) in lifted:
                entries.append(Ban(target, None, scope.ports, scope.verdict))
        await self._remove(entries)

    async def _remove(self, entries: Sequence[Ban]) -> None:
        for ban in entries:
            text = ban.key
            if text in self._deadlines:
                del self._deadlines[text]
                if len(entries) <= _DETAIL_LIMIT:
                    log.info("would unban %s", text, extra={"address": target_text(ban.target)})
        if len(entries) > _DETAIL_LIMIT:
            log.info("would unban many targets", extra={"targets": len(entries)})

    async def _list(self) -> dict[str, float | None]:
        now = self._clock()
        # Like kernel timeouts: an expired ban is simply gone.
        self._deadlines = {t: d for t, d in self._deadlines.items() if d is None or d > now}
        return {t: None if d is None else d - now for t, d in self._deadlines.items()}


def _duration(timeout: int | None) -> str:
    return "ever" if timeout is None else f"{timeout} s"
