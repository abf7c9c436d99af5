"""Text a client wrote, as a person is shown it: what would act made visible.

Ban records, evidence and explained lines hold text an attacker wrote (a user
name, a request path, a JSON log's decoded field). Written raw to an operator's
terminal (the `pyfilter` command, a mail read in a terminal), its control
characters would act: clear the screen, set the window's title, move the cursor
back over a line, reorder what follows (bidirectional overrides). So every
character that acts instead of showing is written as an escape (`\\x1b`,
`\\u202e`), as nginx writes them in its logs, and an undecodable byte of a log
(kept as a surrogate) as the byte (`\\xff`): a lone 0x9b byte is a control
sequence on some terminals. Tabs and newlines are ours. (The admin page does
the same in app.js, `visible`.)
"""

from __future__ import annotations

import re
from typing import TextIO

# C0 controls but tab and newline; DEL and the C1 controls; the marks, embeddings,
# overrides and isolates of bidirectional text; the surrogates Python decodes bytes
# that are not UTF-8 into (surrogateescape).
_ACTING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\udc80-\udcff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # the byte it stands for
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """`text` with every character that would act on a terminal written as its escape."""
    return _ACTING.sub(_escape, text)


class Shown:
    """A text stream whose writes are `shown` first (the command's stdout and stderr)."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(shown(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
