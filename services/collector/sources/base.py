"""The one interface every log source implements, and the text rules they share.

A source is an object with a `name` and an async iterator `batches()` that
yields `Batch` objects:

    async for batch in source.batches():
        await commit(batch)        # XADD the lines + HSET the checkpoint, atomically

- `batch.lines`: up to `batch_lines` lines, each with its stable id. May be
  empty: then the batch only moves the checkpoint (a file opened at its end, a
  rotated file forgotten).
- `batch.checkpoint` / `batch.forget`: fields to set / delete in the source's
  checkpoint hash (`Keys.checkpoint(host, source)`). Only the source reads
  them back (it is built with what the hash held at start), so each source
  chooses its own encoding.
- `batch.program`, `batch.rules`, `batch.container`: whose lines these are,
  when a source holds several programs' logs (containers); None: the
  source's configured `program`.
- `batch.own`: when not None, the addresses and networks on this host that
  belong to what the source reads (its containers), published with the
  batch for the never-ban list in place of what the source published before.
- The consumer commits a batch before it asks for the next one, so a source
  may treat "my iterator was resumed" as "the previous batch is durable". It
  never commits anything itself.
- A source is built as `Kind(cfg, opts, saved, stop)`: its config entry, the
  collector settings, what its checkpoint hash held at start, and an
  asyncio.Event; files and the journal also take the `SourcePlan` the
  collector made for them at start (collector/plan.py). Once `stop` is set the iterator ends soon (within about a
  poll interval), without yielding what it has not finished; that is safe,
  since the checkpoint has not moved past it. Cancelling it is safe too.
- Problems with the input (a file gone, journalctl exiting, the Docker engine
  away) are logged, counted in `stats.errors` and retried by the source; the
  iterator ends only when the collector stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Protocol

from pyfilter.common.messages import Line

if TYPE_CHECKING:  # the root helper (privsep.py) imports this module: keep it small
    import asyncio

    from pyfilter.common.config import CollectorConfig, Source as SourceConfig

# Checkpoint field holding when the source was first started (epoch seconds).
# Its presence means "this source ran before": a file without a checkpoint was
# then created after that start, so it is read from its beginning.
STARTED = "started"


@dataclass
class Batch:
    lines: list[Line]
    checkpoint: dict[str, bytes] = field(default_factory=dict)
    forget: list[str] = field(default_factory=list)
    program: str | None = None
    rules: list[str] | None = None
    container: str | None = None
    own: list[str] | None = None


@dataclass(frozen=True)
class SourcePlan:
    """What the collector decided for one source at start, from the enabled rules."""

    # A log met for the first time is read from its first line this many
    # seconds old (the longest window of the rules it feeds); 0: from its end.
    lookback: int = 0
    # journal: the identifiers (globs allowed) of the rules it carries; None:
    # every entry (the collector enables no rule).
    programs: list[str] | None = None
    # Rules its lines must not feed: copies of lines another source delivers.
    skip: tuple[str, ...] = ()
    # The zone its zone-less times are in, to read line times when seeking.
    tz: str | None = None


@dataclass
class Stats:
    """Counters of one source, read by the Prometheus exporter at scrape time."""

    lines: int = 0  # lines committed to the stream
    batches: int = 0  # stream entries written
    bytes: int = 0  # bytes written to the stream
    cut: int = 0  # lines cut to max_line_bytes
    errors: int = 0  # input or Redis errors (each logged)


class Source(Protocol):
    name: str
    stats: Stats

    def batches(self) -> AsyncIterator[Batch]: ...


class Reader:
    """What every kind of source keeps: its configuration, the collector's
    options, the stop flag, the collector's plan for it, its counters, and
    when it first ran (None: this is its first start)."""

    def __init__(self, cfg: SourceConfig, opts: CollectorConfig, saved: dict[str, bytes],
                 stop: asyncio.Event, plan: SourcePlan | None = None):
        self.name, self.cfg, self.opts, self.stop = cfg.name, cfg, opts, stop
        self.plan = plan or SourcePlan()
        self.stats = Stats()
        self.started = saved.get(STARTED)


def to_text(raw: bytes, max_bytes: int, stats: Stats) -> str:
    """One raw line as text: cut to `max_bytes`, invalid UTF-8 replaced, NULs dropped.

    NUL bytes appear in real logs (a writer without O_APPEND after a
    copytruncate leaves a hole of zeros); they carry nothing and would only
    surprise the patterns downstream, so they are removed.
    """
    if len(raw) > max_bytes:
        raw = raw[:max_bytes]
        stats.cut += 1
    if b"\0" in raw:
        raw = raw.replace(b"\0", b"")
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw.decode("utf-8", "replace")
