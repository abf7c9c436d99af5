"""Reading regular expressions as text: what a pattern requires, and how it can be searched.

Pure functions over pattern source, used when a rule is compiled: the literal
runs every match must contain (for screening lines cheaply), a rewrite of
optional groups that Python's engine runs faster, and whether a pattern may be
searched over many lines joined by newlines.
"""

from __future__ import annotations

import re

from pyfilter.detector.matching.placeholders import strip_placeholders

__all__ = ["literals", "optional_branches", "ascii_digits", "for_block", "anchored", "tokens"]


def literals(pattern: str) -> list[str]:
    """Literal runs every match of `pattern` must contain (top level, unquantified)."""
    pattern = strip_placeholders(pattern)
    runs: list[str] = []
    cur: list[str] = []
    depth = 0
    i, n = 0, len(pattern)

    def flush() -> None:
        if cur:
            runs.append("".join(cur))
            cur.clear()

    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            lit = nxt if not nxt.isalnum() else None
            i += 2
        elif c == "(":
            depth += 1
            flush()
            i += 1
            continue
        elif c == ")":
            depth -= 1
            flush()
            i += 1
            continue
        elif c == "|" and depth == 0:
            return []  # top-level alternation: no literal is required
        elif c == "[":
            flush()
            j = pattern.index("]", i + 2) if "]" in pattern[i + 2:] else n
            i = j + 1
            if i < n and pattern[i] in "?*{":
                i += 1
            continue
        elif c in ".^$*+?{}":
            flush()
            i += 1
            continue
        else:
            lit = c
            i += 1
        if depth > 0 or lit is None:
            flush()
            continue
        if i < n and pattern[i] in "?*{":
            flush()  # the character before a quantifier is optional
            continue
        cur.append(lit)
    flush()
    return [r for r in runs if len(r) >= 4]


def optional_branches(source: str) -> str:
    """`(?:X)?` -> `(?:X|)` and `(?:X)??` -> `(?:|X)`: the same matches in the same order.

    Python's engine runs an optional group through its general repeat
    machinery, a branch with an empty alternative costs less; sshd's header
    alone has six such groups.
    """
    toks = tokens(source)
    out: list[str] = []
    opens: list[int] = []  # index in `out` of each open group's "("
    i = 0
    while i < len(toks):
        tok = toks[i]
        out.append(tok)
        if tok == "(":
            opens.append(len(out) - 1)
        elif tok == ")" and opens:
            start = opens.pop()
            body = out[start + 1:-1]
            after = toks[i + 1:i + 3]
            if body[:2] == ["?", ":"] and after[:1] == ["?"] and after[1:2] not in (["+"],):
                lazy = after[1:2] == ["?"]
                inner = "".join(body[2:])
                del out[start:]
                out.append(f"(?:|{inner})" if lazy else f"(?:{inner}|)")
                i += 2 if lazy else 1
        i += 1
    return "".join(out)


def ascii_digits(source: str) -> str:
    """`\\d` -> `[0-9]`, also inside classes, and `\\D` -> `[^0-9]` outside them.

    For a str pattern Python's `\\d` is any Unicode decimal digit, which
    the engine checks by a function call per character; `[0-9]` is a range
    test. Logs write ports, pids, addresses and times in ASCII digits; a
    line with other digits there is no daemon's. (A class holding `\\D`
    is left as it is.)
    """
    out = []
    for tok in tokens(source):
        if tok == "\\d":
            tok = "[0-9]"
        elif tok == "\\D":
            tok = "[^0-9]"
        elif tok.startswith("[") and "\\d" in tok and "\\D" not in tok:
            tok = "".join("0-9" if t == "\\d" else t for t in _class_items(tok))
        out.append(tok)
    return "".join(out)


def _class_items(token: str) -> list[str]:
    """A class token cut into escapes and single characters (its brackets included)."""
    items, i = [], 0
    while i < len(token):
        step = 2 if token[i] == "\\" else 1
        items.append(token[i:i + step])
        i += step
    return items


def tokens(source: str) -> list[str]:
    """A regex cut into escapes, character classes and single characters."""
    out, i, n = [], 0, len(source)
    while i < n:
        c = source[i]
        if c == "\\":
            out.append(source[i:i + 2])
            i += 2
        elif c == "[":
            j = i + 1
            if j < n and source[j] == "^":
                j += 1
            if j < n and source[j] == "]":
                j += 1  # a leading ] is a member
            while j < n and source[j] != "]":
                j += 2 if source[j] == "\\" else 1
            out.append(source[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return out


def anchored(source: str) -> bool:
    """Whether every match starts at `^` (a leading `^` outside any alternation)."""
    toks = tokens(source)
    if not toks or toks[0] != "^":
        return False
    depth = 0
    for tok in toks:
        depth += tok == "("
        depth -= tok == ")"
        if tok == "|" and depth == 0:
            return False
    return True


def for_block(source: str) -> str | None:
    """The regex for a search over lines joined by newlines (MULTILINE), or None where there is none.

    Each token that could match a newline is made unable to (`\\s` becomes
    `[^\\S\\n]`, `[^"]` becomes `[^"\\n]`, any other such class `(?:(?!\\n)[...])`),
    so a match never runs into the next line, and a lookaround sees the
    newline after a line as it would see the end of that line alone: the
    block search finds exactly what a search of each line would. Patterns
    that tell the end of the string from a line's end (`\\A`, `\\Z`) or set
    flags inline have no such form.
    """
    toks = tokens(source)
    if "\\A" in toks or "\\Z" in toks or re.search(r"\(\?[aiLux-]*[sm][aiLmsux-]*[:)]", source):
        return None
    out = []
    for tok in toks:
        if (tok.startswith("\\") or tok.startswith("[")) and tok not in ("\\n",) and _sees_newline(tok):
            if tok.startswith("[^"):
                tok = tok[:-1] + "\\n]"
            elif tok in _SPLIT:
                tok = _SPLIT[tok]
            else:
                tok = f"(?:(?!\\n){tok})"
        elif tok == "\\n":
            tok = "(?!)"
        out.append(tok)
    return "".join(out)


_SPLIT = {"\\s": "[^\\S\\n]", "\\W": "[^\\w\\n]", "\\D": "[^\\d\\n]"}


def _sees_newline(token: str) -> bool:
    try:
        return re.fullmatch(token, "\n") is not None
    except re.error:
        return False
