"""Network bans the ledger widened, applied by a running enforcer to the real kernel (nftables,
inside a network namespace of our own): the networks go to the interval sets beside their
members, and lifting a network leaves its members banned in the kernel."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest
import redis.asyncio as aioredis

from pyfilter.common.config import Config, NetworkConfig, Seconds, Settings
from pyfilter.common.keys import Keys
from pyfilter.common.ledger import Ledger
from pyfilter.common.network import Widening
from pyfilter.detector.windows import Observed, Windows
from pyfilter.enforcer.backends.nftables import NftablesBackend
from pyfilter.enforcer.main import Enforcer
from tests.unit.netns import new_netns, run_backend
from tests.unit.test_enforcer_loop import until
from tests.unit.test_nftables_backend import Firewall
from tests.unit.test_windows import make_rule

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
    reason="needs root, ip and nft (network namespaces and nftables)",
)

KEYS = Keys("t:")


def settings(url: str) -> Settings:
    config = Config(host="host-b")
    config.redis.url, config.redis.prefix = url, "t:"
    config.enforcer.reconcile_interval = Seconds(3600)  # only what the unban asks for
    return Settings(config=config, rules={}, path="test")


async def ban_each(client, rule: str, addresses: list[str], tag: str) -> None:
    """One failure from each address, each banning at once; networks widen at three."""
    rules = {"sshd": make_rule(window="instant", bantime=Seconds(600)),
             "web": make_rule(window="instant", bantime=Seconds(600), ipv6_prefix=64)}
    widening = Widening(NetworkConfig(enabled=True, threshold=3, bantime=Seconds(300)))
    windows = Windows(client, KEYS.prefix, rules, widening)
    now = time.time()
    await windows.record([Observed(rule, a, "host-a", now, f"{tag}:{a}", "x") for a in addresses], now)


def test_widened_networks_reach_the_kernel_and_lifting_them_keeps_the_members(redis_url):
    # Redis listens on a unix socket: reachable from inside the namespace.
    with new_netns() as netns:
        firewall = Firewall(netns)

        async def scenario(backend):
            client = aioredis.from_url(redis_url)
            await ban_each(client, "sshd", ["198.51.100.1", "198.51.100.2", "198.51.100.3"], "a")
            # A rule that bans IPv6 by /64 (the detector passes the /64 as the address).
            await ban_each(client, "web", ["2001:db8:1:1::/64", "2001:db8:1:2::/64", "2001:db8:1:3::/64"], "b")
            enforcer = Enforcer(settings(redis_url), backend)
            task = asyncio.create_task(enforcer.run())
            try:
                await until(lambda: _kernel_has(firewall, "ban6net", "2001:db8:1::/48"))
                await until(lambda: _kernel_has(firewall, "ban4net", "198.51.100.0/24"))
                widened = firewall.kernel_set("ban4"), firewall.kernel_set("ban6net")
                await Ledger(client, KEYS).unban(["198.51.100.0/24", "2001:db8:1::/48"], "host-a", "shared NAT")
                await until(lambda: _kernel_has(firewall, "ban6net", "2001:db8:1:3::/64"))
                lifted = firewall.kernel_set("ban4"), firewall.kernel_set("ban4net"), firewall.kernel_set("ban6net")
            finally:
                enforcer.stopping.set()
                await asyncio.wait_for(task, 10)
                await client.aclose()
            return widened, lifted

        (ban4, ban6net), (ban4_after, ban4net_after, ban6net_after) = run_backend(netns, NftablesBackend, scenario)
    assert set(ban4) == {"198.51.100.1", "198.51.100.2", "198.51.100.3"}
    assert set(ban6net) == {"2001:db8:1::/48"}  # the interval set holds the widest: it covers its /64s
    assert set(ban4_after) == set(ban4) and ban4net_after == {}
    assert set(ban6net_after) == {"2001:db8:1:1::/64", "2001:db8:1:2::/64", "2001:db8:1:3::/64"}


async def _kernel_has(firewall: Firewall, set_name: str, element: str) -> bool:
    return element in firewall.kernel_set(set_name)
