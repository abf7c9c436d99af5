"""Log sources, one module per kind, all behind the interface in `base.py`."""

from __future__ import annotations

import asyncio

from pyfilter.common.config import CollectorConfig, Source as SourceConfig

from .base import Batch, Source, Stats

__all__ = ["Batch", "Source", "Stats", "build"]


def build(cfg: SourceConfig, opts: CollectorConfig, saved: dict[str, bytes],
          stop: asyncio.Event) -> Source:
    """The source a config entry describes, resuming from its saved checkpoint."""
    # Imported here: a collector loads only the kinds it is configured with.
    if cfg.type == "file":
        from .file import FileSource as kind
    elif cfg.type == "journal":
        from .journal import JournalSource as kind
    elif cfg.type == "docker":
        from .docker import DockerSource as kind
    else:
        raise ValueError(f"source {cfg.name!r}: unknown type {cfg.type!r}")
    return kind(cfg, opts, saved, stop)
