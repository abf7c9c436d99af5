"""fail2ban's configuration files as fail2ban reads them (jail.conf(5)), written from that page.

- A name (`jail`, `filter.d/sshd`) is read from NAME.conf, NAME.d/*.conf,
  NAME.local, NAME.d/*.local, in that order; a later file's value wins.
- A file's [INCLUDES] `before = ...` files are read before it, `after = ...`
  after it (relative to its folder; missing ones are skipped, as
  common.local usually is).
- INI syntax: `[section]`, `name = value` (or `:`), indented lines continue a
  value, `#` and `;` start comment lines, ` ; ` starts an inline comment.
- `%(name)s` is replaced by the option of the section that asks (else of
  [DEFAULT]), itself expanded in the asking section: `filter = %(__name__)s[mode=%(mode)s]`
  in [DEFAULT] reads each jail's name and mode. `%(section/name)s` reads
  another section, `%(default/name)s` [DEFAULT], `%(known/name)s` the value
  the option had before this definition replaced it; `%%` is `%`.

Every value remembers its file and line, so errors name them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT = "DEFAULT"
MAX_DEPTH = 30  # nested references; more means a loop

_SECTION = re.compile(r"\[([^\]]+)\]\s*(?:[#;].*)?$")
_OPTION = re.compile(r"([^=:\s][^=:]*?)\s*[=:]\s?(.*)$")
_INLINE_COMMENT = re.compile(r"\s;(?:\s.*)?$")
_REFERENCE = re.compile(r"%\((?:([^)/]+)/)?([^)]*)\)s|%%|%")


class Fail2banError(Exception):
    """Input fail2ban itself would refuse, or that cannot be read; the message names file and line."""


@dataclass(frozen=True)
class Definition:
    """One `name = value` as written, where, and the definition it replaced (for `known/`)."""

    value: str
    file: Path
    line: int
    earlier: "Definition | None" = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


class Ini:
    """The sections of every file read so far, later definitions over earlier ones."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Definition]] = {DEFAULT: {}}
        self.files: list[Path] = []  # every file read, in order

    def read_name(self, base: Path) -> list[Path]:
        """Read BASE.conf, BASE.d/*.conf, BASE.local, BASE.d/*.local (with their includes);
        return those that exist, in order."""
        folder = Path(f"{base}.d")
        found = [p for p in (
            [Path(f"{base}.conf")] + sorted(folder.glob("*.conf"))
            + [Path(f"{base}.local")] + sorted(folder.glob("*.local"))) if p.is_file()]
        for path in found:
            self.read_file(path)
        return found

    def read_file(self, path: Path, chain: tuple[Path, ...] = ()) -> None:
        """Read one file with its [INCLUDES]; an include loop is an error."""
        real = path.resolve()
        if real in chain:
            raise Fail2banError(f"{path}: includes itself (through {' -> '.join(map(str, chain))})")
        entries, includes = parse(path)
        for name in includes.get("before", []):
            if (path.parent / name).is_file():
                self.read_file(path.parent / name, chain + (real,))
        for section, option, value, line in entries:
            options = self.sections.setdefault(section, {})
            options[option] = Definition(value, path, line, options.get(option))
        self.files.append(path)
        for name in includes.get("after", []):
            if (path.parent / name).is_file():
                self.read_file(path.parent / name, chain + (real,))

    def has(self, section: str) -> bool:
        return section in self.sections

    def definition(self, section: str, option: str) -> Definition | None:
        """The option's definition in `section`, else in [DEFAULT]."""
        found = self.sections.get(section, {}).get(option)
        return found if found is not None else self.sections[DEFAULT].get(option)

    def scope(self, section: str) -> "Scope":
        return Scope(self, [section])


def parse(path: Path) -> tuple[list[tuple[str, str, str, int]], dict[str, list[str]]]:
    """(section, option, value, line) of every option of the file, and its [INCLUDES]."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Fail2banError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise Fail2banError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    entries: list[tuple[str, str, str, int]] = []
    section: str | None = None
    current: list | None = None  # [section, option, lines, line number] of the option being read
    out: list[list] = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped[0] in "#;":
            if not stripped and current is not None:
                current[2].append("")  # kept if an indented line follows (as Python's configparser)
            continue
        stripped = _INLINE_COMMENT.sub("", stripped).rstrip()
        if raw[0] in " \t" and current is not None:
            current[2].append(stripped)
            continue
        if m := _SECTION.match(stripped):
            section, current = m.group(1).strip(), None
            continue
        m = _OPTION.match(stripped)
        if m is None or raw[0] in " \t":
            raise Fail2banError(f"{path}:{number}: expected [section], name = value or an indented "
                                f"continuation line, got {raw.strip()!r}")
        if section is None:
            raise Fail2banError(f"{path}:{number}: {m.group(1)!r} comes before any [section]")
        current = [section, m.group(1).strip(), [m.group(2).strip()], number]
        out.append(current)
    includes: dict[str, list[str]] = {}
    for section, option, lines, number in out:
        while lines and not lines[-1]:
            lines.pop()
        value = "\n".join(lines)
        if section == "INCLUDES":
            includes[option] = value.split()
        else:
            entries.append((section, option, value, number))
    return entries, includes


class Scope:
    """Where names are looked up: `overrides`, then `chain`'s sections in order, then [DEFAULT].

    A jail reads [jail] then [DEFAULT]; a filter [Init], [Definition],
    [DEFAULT], with the jail's `filter = name[key=value]` as overrides.
    `verbatim` maps option names to the text that stands for them whenever the
    definition found is in one of the named files (the translation marks
    common.conf's syslog prefix this way).
    """

    def __init__(self, ini: Ini, chain: list[str], overrides: dict[str, Definition] | None = None,
                 verbatim: dict[str, tuple[set[str], str]] | None = None) -> None:
        self.ini, self.chain = ini, chain
        self.overrides = overrides or {}
        self.verbatim = verbatim or {}

    def definition(self, option: str) -> Definition | None:
        if option in self.overrides:
            return self.overrides[option]
        for section in self.chain:
            found = self.ini.sections.get(section, {}).get(option)
            if found is not None:
                return found
        return self.ini.sections[DEFAULT].get(option)

    def raw(self, option: str) -> str | None:
        found = self.definition(option)
        return None if found is None else found.value

    def get(self, option: str, default: str | None = None) -> str | None:
        """The option's value with every `%(...)s` expanded; `default` if it is not set."""
        found = self.definition(option)
        if found is None:
            return default
        return self.expand(option, found)

    def expand(self, option: str, definition: Definition, depth: int = 0) -> str:
        marked = self.verbatim.get(option)
        if marked is not None and definition.file.name in marked[0]:
            return marked[1]
        if depth > MAX_DEPTH:
            raise Fail2banError(f"{definition.where}: {option}: %(...)s references nest too deep (a loop?)")

        def replace(m: re.Match[str]) -> str:
            text = m.group(0)
            if text == "%%":
                return "%"
            if text == "%":
                raise Fail2banError(f"{definition.where}: {option}: a '%' must be followed by '%' or "
                                    f"'(name)s' (write %% for a percent sign)")
            section, name = m.group(1), m.group(2)
            if section is None and name == "__name__":
                return self.chain[0]
            scope, found = self._find(section, name, option, definition)
            if found is None:
                place = f"[{section}]" if section and section.lower() not in ("default", "known") else \
                    " or ".join(f"[{s}]" for s in self.chain + [DEFAULT])
                raise Fail2banError(f"{definition.where}: {option}: {text}: no option {name!r} in {place}")
            return scope.expand(name, found, depth + 1)

        return _REFERENCE.sub(replace, definition.value)

    def _find(self, section: str | None, name: str, option: str,
              definition: Definition) -> tuple["Scope", Definition | None]:
        if section is None:
            return self, self.definition(name)
        lowered = section.lower()
        if lowered == "default":
            return self, self.ini.sections[DEFAULT].get(name)
        if lowered == "known":
            if name == option:
                earlier = definition.earlier
                if earlier is None and definition is not self.ini.sections[DEFAULT].get(name):
                    earlier = self.ini.sections[DEFAULT].get(name)
                return self, earlier or Definition("", definition.file, definition.line)
            return self, self.definition(name)
        if not self.ini.has(section):
            raise Fail2banError(f"{definition.where}: {option}: %({section}/{name})s: no section [{section}]")
        other = Scope(self.ini, [section], verbatim=self.verbatim)
        return other, other.definition(name)
