"""The iptables side of the ipset backend: chain `pyfilter` and the jumps to it.

Rules change only at start, at each sync and when a ban needs a scope not
seen before, so they go through the `iptables` / `ip6tables` binaries
(whichever flavour, nft or legacy, the host uses, which is also the one
Docker uses) rather than netlink: the xtables wire format is the binaries'
business. The whole chain is written at once with `iptables-restore
--noflush`: its `:pyfilter` line empties our chain only, and the new rules
replace the old atomically, so traffic never sees a half-written chain.

We only ever write to chain `pyfilter` and insert `-j pyfilter` at the top of
INPUT and of DOCKER-USER (the chain Docker keeps for users and jumps to
before its own ACCEPT rules for published ports) or, while Docker has not
made one, of FORWARD. Nothing else is flushed, deleted or reordered.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Sequence

log = logging.getLogger("pyfilter.enforcer.ipset")

CHAIN = "pyfilter"
DOCKER_CHAIN = "DOCKER-USER"


class XtablesError(RuntimeError):
    """An iptables command failed; the message says which, why, and what to do."""


class Xtables:
    """One family's iptables binary (`iptables`, `ip6tables-legacy`, ...)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        # iptables-legacy -> iptables-legacy-restore, ip6tables -> ip6tables-restore
        self.restore = f"{binary}-restore"

    async def _run(self, argv: Sequence[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except FileNotFoundError:
            raise XtablesError(f"{argv[0]} not found: install iptables (apt-get install iptables), or "
                               "use the nftables backend") from None
        out, err = await proc.communicate(stdin)
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace").strip()

    async def run(self, *args: str) -> str:
        code, out, err = await self._run([self.binary, "-w", *args])
        if code:
            hint = " (the enforcer needs CAP_NET_ADMIN)" if "Permission denied" in err else ""
            raise XtablesError(f"`{self.binary} -w {' '.join(args)}` failed: {err or f'exit {code}'}{hint}")
        return out

    async def succeeds(self, *args: str) -> bool:
        code, _, _ = await self._run([self.binary, "-w", *args])
        return code == 0

    async def chain_exists(self, chain: str) -> bool:
        return await self.succeeds("-S", chain)

    async def rules(self) -> list[str]:
        """Our chain's rules as `iptables -S` prints them, or [] if there is no chain yet."""
        if not await self.chain_exists(CHAIN):
            return []
        return [line for line in (await self.run("-S", CHAIN)).splitlines() if line.startswith("-A ")]

    async def write_chain(self, rules: Sequence[str]) -> None:
        """Make chain `pyfilter` exactly `rules` (`-m set ... -j DROP` without `-A pyfilter`)."""
        script = "\n".join(["*filter", f":{CHAIN} - [0:0]", *(f"-A {CHAIN} {r}" for r in rules), "COMMIT", ""])
        code, _, err = await self._run([self.restore, "-w", "--noflush"], script.encode())
        if code:
            raise XtablesError(f"`{self.restore} --noflush` failed to write chain {CHAIN}: {err or f'exit {code}'}")

    async def hook(self) -> list[str]:
        """Jump to our chain from INPUT and DOCKER-USER (or FORWARD while there is none).

        Checked with -C first, so calling it again adds nothing. Returns the
        chains a jump was added to.
        """
        hooks = ["INPUT", DOCKER_CHAIN if await self.chain_exists(DOCKER_CHAIN) else "FORWARD"]
        added = []
        for chain in hooks:
            if not await self.succeeds("-C", chain, "-j", CHAIN):
                await self.run("-I", chain, "1", "-j", CHAIN)
                added.append(chain)
        if added:
            log.info("jump to our chain added", extra={"binary": self.binary, "chain": CHAIN, "to": added})
        return added

    async def hooked(self) -> tuple[list[str], bool]:
        """(the chains that jump to ours, whether forwarded traffic does: through
        DOCKER-USER when Docker made it, else FORWARD)."""
        docker = await self.chain_exists(DOCKER_CHAIN)
        chains = ["INPUT", DOCKER_CHAIN if docker else "FORWARD"]
        jumps = [c for c in chains if await self.succeeds("-C", c, "-j", CHAIN)]
        return jumps, chains[1] in jumps


def comment_of(rule: str) -> str | None:
    """The `--comment` of a rule as `iptables -S` prints it."""
    words = shlex.split(rule)
    for i, word in enumerate(words[:-1]):
        if word == "--comment":
            return words[i + 1]
    return None


def match_set_of(rule: str) -> str | None:
    words = shlex.split(rule)
    for i, word in enumerate(words[:-1]):
        if word == "--match-set":
            return words[i + 1]
    return None
