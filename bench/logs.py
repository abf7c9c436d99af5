"""The two benchmark logs, written fresh so that their last line is "now".

fail2ban ignores every line older than `findtime` when it opens a log, and so
do our windows, so the logs are dated backwards from the moment they are
written. Both are syslog-style sshd logs as Debian's rsyslog writes them
(`Nov 21 20:19:28 host sshd[pid]: ...`, year-less, UTC).

- `stress`: 5,000 addresses from 10.0.0.0/8, 125,000 failed logins over
  10 minutes, each logged as the four lines sshd and PAM write for a failed
  keyboard-interactive login of an unknown user: 500,000 lines. Two of the
  four are failures for fail2ban's sshd filter and for our sshd rule (the
  `Failed ...` and `error: PAM: ...` lines), so every address fails 50 times
  and is banned.
- `mixed`: 1,000,000 lines over 30 minutes of a busy server: users logging in
  (public keys, passwords, the odd typo), their sessions, cron, sudo, port
  scanners that never authenticate, and password-guessing bots. About one
  line in five is a failure. Bots that fail at least `maxretry` times are the
  addresses that must be banned; users fail at most twice and never are.

Each generator returns a `LogFile` with the counts the tools must agree on,
so a run can check that fail2ban and PyFilter saw the same thing.
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

MAXRETRY = 5  # the jail's and the rule's threshold (both tools' default)
HOST = "bench"


def sshd_as_fail2ban(maxretry: int, findtime: int, bantime: int) -> dict:
    """The sshd rule's settings for a run beside fail2ban's sshd jail: failures counted per
    address only, as the jail counts them (the catalog's slow and per-account windows,
    which fail2ban has not, are off; bench.replay_kinds measures what they cost)."""
    return {"maxretry": maxretry, "findtime": findtime, "bantime": bantime, "slow": None, "per_account": False}


@dataclass
class LogFile:
    path: Path
    lines: int = 0
    failures: int = 0  # lines that are failures for fail2ban's sshd filter and our sshd rule
    failures_by_address: dict[str, int] = field(default_factory=dict)
    span: float = 0.0  # seconds between the first and the last line

    @property
    def banned(self) -> set[str]:
        """Addresses with at least MAXRETRY failures: all fall within one findtime."""
        return {a for a, n in self.failures_by_address.items() if n >= MAXRETRY}


class _Clock:
    """Syslog timestamps ("Nov  1 20:19:28"), formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def stamp(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%b %e %H:%M:%S", time.gmtime(second))
        return self._text


USERS = ["root", "admin", "test", "user", "oracle", "postgres", "ubuntu", "git", "ftpuser",
         "guest", "pi", "deploy", "jenkins", "hadoop", "support", "minecraft", "nagios", "www"]


def _ten(i: int) -> str:
    """The i-th address of 10.0.0.0/8 (skipping .0 and .255 host bytes)."""
    return f"10.{(i // 62_500) % 256}.{(i // 250) % 250}.{1 + i % 250}"


def write_stress(path: Path, addresses: int = 5_000, logins: int = 125_000, span: float = 600.0,
                 end: float | None = None) -> LogFile:
    end = time.time() if end is None else end
    start = end - span
    clock = _Clock()
    info = LogFile(path, span=span)
    rng = random.Random(1)
    step = span / max(logins - 1, 1)
    with open(path, "w", encoding="utf-8") as f:
        out = []
        for i in range(logins):
            stamp = clock.stamp(start + i * step)
            addr = _ten(i % addresses * 3 + 7)  # spread over a few /16s
            user = USERS[rng.randrange(len(USERS))] + str(i % 97)
            pid = 10_000 + i % 50_000
            port = 1024 + rng.randrange(60_000)
            head = f"{stamp} {HOST} sshd[{pid}]: "
            out.append(f"{head}Failed keyboard-interactive/pam for invalid user {user} from {addr} port {port} ssh2\n")
            out.append(f"{head}pam_unix(sshd:auth): check pass; user unknown\n")
            out.append(f"{head}pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 "
                       f"tty=ssh ruser= rhost={addr}\n")
            out.append(f"{head}error: PAM: Authentication failure for {user} from {addr}\n")
            info.failures_by_address[addr] = info.failures_by_address.get(addr, 0) + 2
            if len(out) >= 20_000:
                f.writelines(out)
                out.clear()
        f.writelines(out)
    info.lines = 4 * logins
    info.failures = 2 * logins
    return info


class _Mixed:
    """Events of a busy sshd host, each a few lines; times assigned per line."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        # Bots: a few heavy hitters, many that try a handful of times.
        self.bots = [_ten(1_000_003 + 17 * i) for i in range(6_000)]
        weights = [1.0 / (1 + i // 40) for i in range(len(self.bots))]
        self.bot_cum = list(itertools.accumulate(weights))
        self.scanners = [_ten(2_000_011 + 13 * i) for i in range(2_000)]
        # People: documentation ranges, each with a name.
        self.people = [(f"192.0.2.{i}" if i < 255 else f"198.51.100.{i - 254}", f"u{i:03d}")
                       for i in range(1, 400)]
        self.typos: dict[str, int] = {}
        self.session = 1000
        self.pid = 2000

    def _pid(self) -> int:
        self.pid = 2000 + (self.pid - 1999) % 60_000
        return self.pid

    def event(self) -> list[tuple[str, str | None]]:
        """Lines of one event: (text after the timestamp, address if the line is a failure)."""
        r = self.rng.random()
        if r < 0.60:
            return self._bot()
        if r < 0.70:
            return self._scanner()
        if r < 0.88:
            return self._login()
        if r < 0.96:
            return self._cron()
        return self._sudo()

    def _bot(self) -> list[tuple[str, str | None]]:
        rng = self.rng
        addr = rng.choices(self.bots, cum_weights=self.bot_cum)[0]
        port = 1024 + rng.randrange(60_000)
        head = f"{HOST} sshd[{self._pid()}]: "
        if rng.random() < 0.5:
            user = rng.choice(USERS) + str(rng.randrange(100))
            return [
                (f"{head}Invalid user {user} from {addr} port {port}", addr),
                (f"{head}pam_unix(sshd:auth): check pass; user unknown", None),
                (f"{head}pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
                 f"ruser= rhost={addr}", None),
                (f"{head}Failed password for invalid user {user} from {addr} port {port} ssh2", addr),
                (f"{head}Received disconnect from {addr} port {port}:11: Bye Bye [preauth]", None),
                (f"{head}Disconnected from invalid user {user} {addr} port {port} [preauth]", None),
            ]
        return [
            (f"{head}pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh "
             f"ruser= rhost={addr}  user=root", None),
            (f"{head}Failed password for root from {addr} port {port} ssh2", addr),
            (f"{head}Connection closed by authenticating user root {addr} port {port} [preauth]", None),
        ]

    def _scanner(self) -> list[tuple[str, str | None]]:
        addr = self.rng.choice(self.scanners)
        port = 1024 + self.rng.randrange(60_000)
        head = f"{HOST} sshd[{self._pid()}]: "
        if self.rng.random() < 0.5:
            return [(f"{head}Connection closed by {addr} port {port} [preauth]", None)]
        return [(f"{head}kex_exchange_identification: Connection closed by remote host", None),
                (f"{head}Connection closed by {addr} port {port}", None)]

    def _login(self) -> list[tuple[str, str | None]]:
        rng = self.rng
        addr, user = rng.choice(self.people)
        port = 1024 + rng.randrange(60_000)
        pid = self._pid()
        self.session += 1
        head = f"{HOST} sshd[{pid}]: "
        logind = f"{HOST} systemd-logind[412]: "
        lines: list[tuple[str, str | None]] = []
        if rng.random() < 0.7:
            lines.append((f"{head}Accepted publickey for {user} from {addr} port {port} ssh2: "
                          f"ED25519 SHA256:{rng.getrandbits(128):032x}", None))
        else:
            if rng.random() < 0.1 and self.typos.get(addr, 0) < 2:
                self.typos[addr] = self.typos.get(addr, 0) + 1
                lines.append((f"{head}Failed password for {user} from {addr} port {port} ssh2", addr))
            lines.append((f"{head}Accepted password for {user} from {addr} port {port} ssh2", None))
        uid = 1000 + int(user[1:])
        lines += [
            (f"{head}pam_unix(sshd:session): session opened for user {user}(uid={uid}) by (uid=0)", None),
            (f"{logind}New session {self.session} of user {user}.", None),
            (f"{head}Received disconnect from {addr} port {port}:11: disconnected by user", None),
            (f"{head}Disconnected from user {user} {addr} port {port}", None),
            (f"{head}pam_unix(sshd:session): session closed for user {user}", None),
            (f"{logind}Session {self.session} logged out. Waiting for processes to exit.", None),
            (f"{logind}Removed session {self.session}.", None),
        ]
        return lines

    def _cron(self) -> list[tuple[str, str | None]]:
        head = f"{HOST} CRON[{self._pid()}]: "
        return [(f"{head}pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)", None),
                (f"{head}pam_unix(cron:session): session closed for user root", None)]

    def _sudo(self) -> list[tuple[str, str | None]]:
        _, user = self.rng.choice(self.people)
        cmd = self.rng.choice(["/usr/bin/systemctl status nginx", "/usr/bin/apt update",
                               "/usr/bin/journalctl -u ssh", "/usr/bin/tail -f /var/log/syslog"])
        return [(f"{HOST} sudo: {user:>8} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; COMMAND={cmd}", None),
                (f"{HOST} sudo: pam_unix(sudo:session): session opened for user root(uid=0) by {user}(uid=0)", None),
                (f"{HOST} sudo: pam_unix(sudo:session): session closed for user root", None)]


def write_mixed(path: Path, lines: int = 1_000_000, span: float = 1800.0,
                end: float | None = None) -> LogFile:
    end = time.time() if end is None else end
    start = end - span
    step = span / max(lines - 1, 1)
    clock = _Clock()
    gen = _Mixed(random.Random(2))
    info = LogFile(path, span=span)
    by_addr = info.failures_by_address
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        out = []
        while n < lines:
            for text, failed in gen.event():
                if n == lines:
                    break  # the last event may be cut short; its lines stay consistent
                out.append(f"{clock.stamp(start + n * step)} {text}\n")
                n += 1
                if failed is not None:
                    info.failures += 1
                    by_addr[failed] = by_addr.get(failed, 0) + 1
            if len(out) >= 20_000:
                f.writelines(out)
                out.clear()
        f.writelines(out)
    info.lines = n
    return info


if __name__ == "__main__":
    import sys

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for name, write in (("stress.log", write_stress), ("mixed.log", write_mixed)):
        t = time.perf_counter()
        log = write(folder / name)
        print(f"{log.path}: {log.lines:,} lines, {log.failures:,} failures, "
              f"{len(log.failures_by_address):,} failing addresses, {len(log.banned):,} to ban "
              f"({time.perf_counter() - t:.1f} s)")
