"""Firewall backends of the enforcer, chosen by name (config `enforcer.backend`)."""

from __future__ import annotations

from typing import Any

from pyfilter.enforcer.backends.base import Backend, Ban

__all__ = ["BACKENDS", "Backend", "Ban", "make_backend"]

BACKENDS = ("nftables", "log-only")


def make_backend(name: str, **options: Any) -> Backend:
    """The backend called `name`; `options` go to its constructor."""
    # Imported here so that a log-only enforcer never needs nftables support.
    if name == "nftables":
        from pyfilter.enforcer.backends.nftables import NftablesBackend

        return NftablesBackend(**options)
    if name == "log-only":
        from pyfilter.enforcer.backends.log_only import LogOnlyBackend

        return LogOnlyBackend(**options)
    raise ValueError(f"unknown firewall backend {name!r}: expected one of {', '.join(BACKENDS)}")
