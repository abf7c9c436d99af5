"""Log sources, one module per kind, all behind the interface in `base.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Batch, Source, SourcePlan, Stats

if TYPE_CHECKING:  # not imported at run time: the root helper (privsep.py) stays small
    import asyncio

    from pyfilter.common.config import CollectorConfig, Source as SourceConfig

__all__ = ["Batch", "Source", "SourcePlan", "Stats", "build"]


def build(cfg: SourceConfig, opts: CollectorConfig, saved: dict[str, bytes],
          stop: asyncio.Event, plan: SourcePlan) -> Source:
    """The source a config entry describes, resuming from its saved checkpoint."""
    # Imported here: a collector loads only the kinds it is configured with.
    if cfg.type == "file":
        from .file import FileSource

        return FileSource(cfg, opts, saved, stop, plan)
    if cfg.type == "journal":
        from .journal import JournalSource

        return JournalSource(cfg, opts, saved, stop, plan)
    if cfg.type == "docker":
        from .docker import DockerSource

        return DockerSource(cfg, opts, saved, stop)
    raise ValueError(f"source {cfg.name!r}: unknown type {cfg.type!r}")
