"""Ban notices as mail: composing them, and sending over SMTP.

Plain text, so that they read well in any mail client and in a pager. Times
are UTC, written out, because the reader may be anywhere.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from pyfilter.common.config import EmailConfig
from pyfilter.common.messages import Notice
from pyfilter.common.shown import shown

SUBJECT_PREFIX = "[pyfilter]"


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _until(n: Notice) -> str:
    if n.event == "unban":
        return "unbanned"
    if n.event == "expiry":
        return f"ran out {_when(n.expires_at)}"
    if n.expires_at is None or n.duration < 0:
        return "permanent"
    return f"{_when(n.expires_at)} ({n.duration} s)"


# What a notice's subject says happened (a network ban's end is announced too).
_HAPPENED = {"ban": "banned by {rule} on {host}", "unban": "unbanned (banned by {rule})",
             "expiry": "no longer banned (the {rule} ban ran out)"}


def _message(cfg: EmailConfig, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.to)
    msg["Subject"] = subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=cfg.sender.rpartition("@")[2] or None)
    msg.set_content(body)
    return msg


def single(cfg: EmailConfig, n: Notice) -> EmailMessage:
    """One mail about one ban: everything known about it."""
    rows = [
        ("address", n.address), ("rule", n.rule), ("seen by", n.host), ("origin", n.origin),
        ("country", n.country or "unknown"), ("banned at", _when(n.banned_at)),
        ("until", _until(n)), ("ban count", str(n.ban_count)),
    ]
    if n.window:
        rows.append(("window", n.window))
    if n.members:
        rows.append(("members", f"{n.members} banned addresses of it"))
    if n.failures:
        rows.append(("failures", f"{n.failures} (first {_when(n.first_failure)}, "
                                 f"last {_when(n.last_failure)})"))
    if n.reason:
        rows.append(("reason", n.reason))
    body = "\n".join(f"{k + ':':<11}{v}" for k, v in rows)
    if n.lines:
        # A client's text: its controls as escapes, for a mail read in a terminal too.
        body += "\n\nMatching log lines:\n" + "\n".join(f"  {shown(line)}" for line in n.lines)
    subject = f"{SUBJECT_PREFIX} {n.address} " + _HAPPENED[n.event].format(rule=n.rule, host=n.host)
    return _message(cfg, subject, body + "\n")


def digest(cfg: EmailConfig, notices: list[Notice]) -> EmailMessage:
    """One mail listing several bans, oldest first, one line each."""
    notices = sorted(notices, key=lambda n: n.banned_at)
    hosts = sorted({n.host for n in notices})
    header = f"{'banned at':<24}{'address':<40}{'rule':<20}{'host':<20}{'country':<9}until"
    rows = [f"{_when(n.banned_at):<24}{n.address:<40}{n.rule:<20}{n.host:<20}"
            f"{n.country or '-':<9}{_until(n)}" for n in notices]
    subject = (f"{SUBJECT_PREFIX} {len(notices)} address{'es' if len(notices) != 1 else ''} "
               f"banned on {', '.join(hosts)}")
    body = (f"{len(notices)} bans from {_when(notices[0].banned_at)} "
            f"to {_when(notices[-1].banned_at)}:\n\n{header}\n" + "\n".join(rows) + "\n")
    return _message(cfg, subject, body)


def _connect(cfg: EmailConfig) -> smtplib.SMTP:
    if cfg.tls == "ssl":
        return smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout,
                                context=ssl.create_default_context())
    smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
    if cfg.tls == "starttls":
        try:
            smtp.starttls(context=ssl.create_default_context())
        except BaseException:
            smtp.close()
            raise
    return smtp


def send(cfg: EmailConfig, password: str | None, mails: list[EmailMessage]) -> list[str | None]:
    """Send over one connection; per mail, None when the server took it or the error.

    Blocking: run it in a thread. smtplib's errors are all OSErrors.
    """
    results: list[str | None] = []
    try:
        with _connect(cfg) as smtp:
            if cfg.username:
                smtp.login(cfg.username, password or "")
            for msg in mails:
                try:
                    smtp.send_message(msg)
                    results.append(None)
                except OSError as exc:
                    results.append(f"{type(exc).__name__}: {exc}")
    except OSError as exc:
        # Mails already accepted stay accepted, even if saying goodbye failed.
        error = f"{type(exc).__name__}: {exc}"
        return results + [error] * (len(mails) - len(results))
    return results
