"""Which paths a file source watches, and where a log's rotated copies are.

logrotate and daemons name a rotated log after the live one: `auth.log.1`,
`auth.log-20240501` (dateext), compressed `auth.log.2.gz`. A glob names live
logs only, never those. A symbolic link's target lives under a name of its
own, often in another folder (`current -> app-3.log`).
"""

from __future__ import annotations

import glob
import os
import re

from .packed import readable as packed_readable

COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip")
# What logrotate appends to a rotated name: `.1`, or `-20240501` with dateext.
ROTATED_NAME = re.compile(r"(\.\d+|-\d{8}(\d{2})?)$")
DIGITS = re.compile(r"\d+")


def watched_paths(patterns: list[str]) -> list[str]:
    """The paths a file source watches: its paths, globs expanded to live files."""
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths += sorted(p for p in glob.glob(pattern) if not ROTATED_NAME.search(p)
                            and not p.lower().endswith(COMPRESSED))
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))


def link_targets(paths: list[str]) -> list[str]:
    """The files symbolic links among `paths` point to: writes to them happen in
    their own folder, which is watched too (else they wait for the rescan)."""
    return [os.path.realpath(p) for p in paths if not glob.has_magic(p) and os.path.islink(p)]


def relatives(path: str, packed: bool = False, named: str = "rotated") -> list[os.DirEntry]:
    """Rotated relatives of `path`, by name, in its folder: named after its live
    name (`rotated`), every file (`any`), or (`numbered`, a link's targets:
    `app-3.log` for `app-4.log`) named like it but for the digits;
    uncompressed, or (`packed`) compressed in a form packed.py reads."""
    folder, name = os.path.split(path)
    live = live_name(name)  # app.log.1 has moved on to app.log.2, app.log.1.gz to app.log.2.gz
    try:
        entries = sorted(os.scandir(folder or "."), key=lambda e: e.name)
    except OSError:
        return []
    if named == "any":
        kin = entries
    elif named == "numbered":
        kin = [e for e in entries if e.name != name and DIGITS.sub("", e.name) == DIGITS.sub("", name)]
    else:
        kin = [e for e in entries if e.name.startswith(live) and e.name != live]
    if packed:
        return [e for e in kin if packed_readable(e.name)]
    return [e for e in kin if not e.name.lower().endswith(COMPRESSED)]


def live_name(name: str) -> str:
    """The live log's name a rotated one was made from: `app.log.2.gz` -> `app.log`."""
    lower = name.lower()
    plain = next((name[: -len(ext)] for ext in COMPRESSED if lower.endswith(ext)), name)
    return ROTATED_NAME.sub("", plain) or plain


def identity(entry: os.DirEntry) -> str:
    """A folder entry's file identity, `dev:ino` (as checkpoints key files); "" if it is gone."""
    try:
        st = entry.stat()
    except OSError:
        return ""
    return f"{st.st_dev}:{st.st_ino}"
