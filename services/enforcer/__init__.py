"""The enforcer: ban decisions into the kernel firewall.

pyroute2's package `__init__` imports every part of the library (163
modules: wireless, devlink, NDB, ...), about 10 MB resident, of which the
enforcer uses the netlink core, nftables, ipset and rtnetlink. Unless
something imported the whole library already, the package is registered
here as a bare namespace over the same folder, so that `from pyroute2.X
import Y` loads X and what X needs, nothing else (5 MB less on the idle
stack's budget, docs/benchmarks.md). Import its parts by their module
(`pyroute2.iproute`, not `pyroute2`).
"""

import importlib.util
import sys
import types

if "pyroute2" not in sys.modules:
    _spec = importlib.util.find_spec("pyroute2")
    if _spec is not None and _spec.submodule_search_locations:
        _package = types.ModuleType("pyroute2")
        _package.__path__ = list(_spec.submodule_search_locations)
        _package.__spec__ = _spec
        sys.modules["pyroute2"] = _package
