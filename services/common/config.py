"""The configuration file: its schema, and loading it with clear errors.

The file is YAML, decoded once at start into typed Structs; a bad file stops
the service with the path of the bad field and what was expected, e.g.
`config.yaml: rules.sshd.findtime: expected a duration like "10m", got "ten"`.

Rules come from the catalog (one YAML file per rule in `catalog_dir`); the
main file's `rules:` section enables them and overrides their settings.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from urllib.parse import unquote
from typing import Annotated, Any, Literal

import msgspec
import yaml

# libyaml's parser where the system has it (Debian's python3-yaml, PyPI's wheels): the
# catalog's hundred files load in a third of the time. Both load only plain data.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

from pyfilter.common.zones import InvalidZone, get_zone

DEFAULT_PATH = "/etc/pyfilter/pyfilter.yaml"

_DURATION = re.compile(r"^\s*(-?\d+)\s*([smhdw]?)\s*$", re.ASCII)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(Exception):
    """A configuration problem, phrased for the operator."""


def parse_duration(value: int | str) -> int:
    """Seconds from `600`, `"600"`, `"10m"`, `"1h"`, `"2d"`; -1 means forever."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "10m", got {value!r}')
    if isinstance(value, int):
        seconds = value
    else:
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f'expected a duration like "10m", got "{value}"')
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds < -1:
        raise ValueError(f"expected a duration of 0 or more (or -1 for forever), got {value!r}")
    return seconds


class Seconds(int):
    """A duration in seconds, written in the file as 600 or "10m"."""


class Cidr(str):
    """A network in CIDR form (a bare address means /32 or /128), checked at load."""


def _decode_custom(type_: type, value: Any) -> Any:
    if type_ is Seconds:
        return Seconds(parse_duration(value))
    if type_ is Cidr:
        if not isinstance(value, str):
            raise ValueError(f'expected a network like "198.51.100.0/24", got {value!r}')
        try:
            return Cidr(ipaddress.ip_network(value.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f'expected a network like "198.51.100.0/24", got "{value}" ({exc})') from None
    raise NotImplementedError


Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class Escalation(msgspec.Struct, forbid_unknown_fields=True):
    """Repeat offenders: bantime * factor^(n-1), capped at maxtime."""

    factor: Annotated[float, msgspec.Meta(ge=1)] = 1.0
    maxtime: Seconds = Seconds(7 * 86400)
    # How long after its last ban an address's ban count (n above) is kept;
    # -1 keeps it for ever. Bounds what Redis holds per address ever banned.
    memory: Seconds = Seconds(30 * 86400)

    def __post_init__(self) -> None:
        if self.memory == 0 or self.memory < -1:
            raise ValueError("escalation.memory: expected a duration, or -1 for ever")


WINDOWS = ("sliding", "consecutive", "instant", "distinct")
# Values a distinct window keeps per address (each a 16-hex digest and its
# weight): what bounds its memory, so a threshold must be reachable within it.
MAX_DISTINCT = 256
MAX_BUCKETS = 1000  # fields of a slow window per address


class Pattern(msgspec.Struct, forbid_unknown_fields=True):
    """A pattern with settings of its own: active in some of the rule's modes only
    (`{re: ..., modes: [aggressive]}`; none: every mode), or counting as `weight`
    failures (`{re: ..., weight: 5}`: a probe of a path that exists only to be probed)."""

    re: str
    modes: list[str] = []
    weight: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


# The failures a per-account window keeps (the newest): what bounds its memory and
# its evidence, whatever an attacker sends; ledger.lua's ACCOUNT_KEEP is the same.
MAX_ACCOUNT_FAILURES = 1000
_USER_CAPTURE = "(?P<user>"


class PerAccount(msgspec.Struct, forbid_unknown_fields=True):
    """The per-account window (docs/rules.md, "Window kinds"): `failures` failures on one
    account of the rule's service, from at least `addresses` distinct addresses, within
    `findtime`, over every host, ban each address that failed on it then, except those
    that logged in as that account (the rule's `success` patterns) within `success_memory`."""

    failures: Annotated[int, msgspec.Meta(ge=2, le=MAX_ACCOUNT_FAILURES)] = 20
    addresses: Annotated[int, msgspec.Meta(ge=2)] = 10
    findtime: Seconds = Seconds(600)
    success_memory: Seconds = Seconds(30 * 86400)

    def __post_init__(self) -> None:
        if self.addresses > self.failures:
            raise ValueError(f"addresses: {self.addresses} distinct addresses cannot come from "
                             f"{self.failures} failures; expected at most `failures`")
        if self.findtime < 1:
            raise ValueError("findtime: expected a duration of at least 1s")
        if self.success_memory < 1:
            raise ValueError("success_memory: expected a duration of at least 1s")


class SlowWindow(msgspec.Struct, forbid_unknown_fields=True):
    """A rule's second, long window (`slow:`): `maxretry` failures within
    `findtime` ban for `bantime` (default: the rule's). It keeps a count per
    `bucket` of log time, not each failure, so its memory does not grow with
    them: a failure counts in its bucket, and the window at a failure is its
    bucket and the ones before it, findtime/bucket in all (docs/rules.md)."""

    maxretry: Annotated[int, msgspec.Meta(ge=1)] = 30
    findtime: Seconds = Seconds(86400)
    bucket: Seconds = Seconds(3600)
    bantime: Seconds | None = None

    def __post_init__(self) -> None:
        if self.bucket < 1 or self.findtime < self.bucket or self.findtime % self.bucket:
            raise ValueError(f"slow.bucket: expected a duration that divides findtime ({self.findtime} s), "
                             f"got {self.bucket} s")
        if self.findtime // self.bucket > MAX_BUCKETS:
            raise ValueError(f"slow.bucket: at most {MAX_BUCKETS} buckets per window, got "
                             f"{self.findtime // self.bucket}: take longer buckets")


class Rule(msgspec.Struct, forbid_unknown_fields=True):
    """A detection rule: which lines are failures, and when to ban (docs/rules.md)."""

    service: str
    patterns: list[str | Pattern]
    # Syslog identifiers (program names, globs allowed) whose messages the
    # rule reads; its patterns then match the message after the envelope.
    # None: the rule matches whole lines, as rules did before envelopes.
    programs: list[str] = []
    # Collector sources the rule is restricted to; none: any source.
    sources: list[str] = []
    # Regex matched before every pattern (placeholders allowed): a daemon's
    # own file header, words common to all its messages.
    prefix: str = ""
    ignore: list[str] = []
    prefilter: list[str] = []
    # Successful logins of `user` from <HOST> (sshd's "Accepted ..."): they end a
    # connection, as a <SUCCESS> pattern does, and spare the address in the
    # rule's per-account window.
    success: list[str] = []
    timezone: str | None = None
    # The modes the patterns name (fail2ban's normal, ddos, aggressive...);
    # `mode` picks one, by default the first. For older files, `mode` may
    # still name the window kind (sliding, consecutive, instant).
    modes: list[str] = []
    mode: str | None = None
    window: Literal["sliding", "consecutive", "instant", "distinct"] = "sliding"
    maxretry: Annotated[int, msgspec.Meta(ge=1)] = 5
    findtime: Seconds = Seconds(600)
    request_time: Seconds = Seconds(5)
    failed_attempts: Annotated[int, msgspec.Meta(ge=1)] = 5
    # A second, long window beside `window` (slow brute force): None, none.
    slow: SlowWindow | None = None
    # Window `distinct`: regexes searched in a failure's `value` capture (a request
    # path); a value one finds is not counted (a site's own assets).
    ignore_values: list[str] = []
    bantime: Seconds = Seconds(600)
    escalation: Escalation = msgspec.field(default_factory=Escalation)
    ports: list[Port] = []
    verdict: Literal["drop", "reject"] = "drop"
    ipv6_prefix: Annotated[int, msgspec.Meta(ge=1, le=128)] = 128
    enabled: bool = True
    description: str = ""
    # Where the line forms come from (the daemon's source, real logs).
    forms: str = ""
    # Send its bans to the channels of the `notify:` section.
    notify: bool = False
    # The per-account window, beside the per-address one; `false` or absent: off.
    per_account: PerAccount | bool | None = None

    def __post_init__(self) -> None:
        if not self.patterns:
            raise ValueError("a rule needs at least one pattern")
        if self.mode in WINDOWS:  # an older file: `mode` named the window kind
            self.window, self.mode = self.mode, None  # type: ignore[assignment]
        if self.mode is None:
            self.mode = self.modes[0] if self.modes else None
        elif self.mode not in self.modes:
            known = ", ".join(self.modes) if self.modes else "none (the rule has one mode)"
            raise ValueError(f"mode: expected one of the rule's modes ({known}), got {self.mode!r}")
        self._check_distinct()
        for i, p in enumerate(self.patterns):
            if isinstance(p, Pattern):
                unknown = set(p.modes) - set(self.modes)
                if unknown:
                    raise ValueError(f"patterns[{i}].modes: {sorted(unknown)} not among the rule's modes {self.modes}")
        self._check_per_account()

    def _check_per_account(self) -> None:
        """`per_account: true` takes the defaults; it needs the user name the patterns capture."""
        for i, p in enumerate(self.success):
            if _USER_CAPTURE not in p or "<HOST>" not in p:
                raise ValueError(f"success[{i}]: a successful login names its user and address: "
                                 f"expected (?P<user>...) and <HOST> in {p!r}")
        if self.per_account is True:
            self.per_account = PerAccount()
        elif self.per_account is False:
            self.per_account = None
        if self.per_account is not None and not any(_USER_CAPTURE in p for _, p in self.active_patterns()):
            raise ValueError("per_account: the rule's patterns capture no user name ((?P<user>...)); "
                             "a per-account window needs one: remove per_account or set it to false")

    def _check_distinct(self) -> None:
        """A distinct window's threshold must fit in the values it keeps; its ignore list must compile."""
        if self.window == "distinct" and self.maxretry > MAX_DISTINCT:
            raise ValueError(f"maxretry: a distinct window keeps at most {MAX_DISTINCT} values per address, "
                             f"got {self.maxretry}")
        if self.ignore_values and self.window != "distinct":
            raise ValueError("ignore_values: only a rule with window: distinct counts values")
        for i, raw in enumerate(self.ignore_values):
            try:
                re.compile(raw)
            except re.error as exc:
                raise ValueError(f"ignore_values[{i}]: {exc}: {raw}") from None

    def active_patterns(self) -> list[tuple[int, str]]:
        """(index in `patterns`, regex) of the patterns active in the rule's mode."""
        return [(i, p) if isinstance(p, str) else (i, p.re) for i, p in enumerate(self.patterns)
                if isinstance(p, str) or not p.modes or self.mode in p.modes]

    def weight_of(self, index: int) -> int:
        """How many failures a match of patterns[index] counts as."""
        p = self.patterns[index]
        return 1 if isinstance(p, str) else p.weight


class Source(msgspec.Struct, forbid_unknown_fields=True):
    """A log source the collector follows. Rules name sources by `name`."""

    name: str
    type: Literal["file", "journal", "docker"] = "file"
    # file: files or globs of live files. journal: journal files or folders
    # (none: the system journal). docker: Docker's containers folder
    # (default /host/docker/containers, where compose mounts it).
    paths: list[str] = []
    from_start: bool = False
    # journal: journalctl matches, e.g. ["_SYSTEMD_UNIT=ssh.service", "+", "SYSLOG_IDENTIFIER=sshd"],
    # read instead of the identifiers of the rules the journal carries.
    match: list[str] = []
    # docker: one container by name or id, or every container with a label
    # ("key" or "key=value"); neither: every container whose image or
    # `pyfilter.rules` label says which rules read it.
    container: str | None = None
    label: str | None = None
    # docker: image globs -> the program whose log the container holds
    # ("*/myproxy*": nginx), tried before the built-in ones (an empty program
    # leaves matching containers unread).
    images: dict[str, str] = {}
    # The program whose own log this is, for lines without a syslog header
    # naming one (nginx's error log: "nginx"); rules are chosen by program.
    program: str | None = None
    # The zone of timestamps that carry none (syslog's `Nov 22 01:59:00`): a
    # zoneinfo name or +hh:mm. Default: the collector's local zone (TZ,
    # /etc/timezone), else UTC. A wrong zone makes failures look hours old.
    timezone: str | None = None

    def __post_init__(self) -> None:
        if self.timezone is not None:
            try:
                get_zone(self.timezone)
            except InvalidZone as exc:
                raise ValueError(f"source {self.name!r}: timezone: {exc}") from None
        if self.type == "file" and not self.paths:
            raise ValueError(f"source {self.name!r} of type file needs at least one path")
        if self.type == "docker" and len(self.paths) > 1:
            raise ValueError(f"source {self.name!r} of type docker takes one path: Docker's containers folder")
        if self.images and self.type != "docker":
            raise ValueError(f"source {self.name!r}: `images` is for sources of type docker")


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True):
    # redis://host:6379/0, rediss://host:6380/0 (TLS), unix:///path/redis.sock, or
    # Sentinel: redis+sentinel://[:password@]host:26379,host2:26379/SERVICE[/db]
    # (rediss+sentinel:// with TLS): the primary is asked of the sentinels and
    # followed through failovers.
    url: str = "redis://127.0.0.1:6379/0"
    # Better given as PYFILTER_REDIS_PASSWORD than written here.
    password: str | None = None
    # The Redis (ACL) user; none: `default` (PYFILTER_REDIS_USERNAME, or in the URL).
    username: str | None = None
    # TLS: the CA that signed the server's certificate (rediss:// URLs).
    tls_ca_file: str | None = None
    # Refuse a plain redis:// URL to another machine (agents: on unless the operator opts out).
    require_tls: bool = False
    prefix: str = "pyfilter:"
    # Redis Cluster: `url` names one node (redis://host:port), the others are
    # found from it. Windows spread over the primaries by address (docs/scaling.md).
    cluster: bool = False
    lines_maxlen: Annotated[int, msgspec.Meta(ge=1000)] = 1_000_000
    # Writes that must not be lost (lines with their checkpoint, windows, bans,
    # unbans, whitelist changes) count as done only once this many replicas hold
    # them (WAIT); until then they are retried. 0: one Redis, no WAIT. On Redis
    # Cluster, each write waits for the replicas of the primary that took it.
    wait_replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    # How long one WAIT gives the replicas before the write is retried.
    wait_timeout_ms: Annotated[int, msgspec.Meta(ge=1)] = 1000

    def __post_init__(self) -> None:
        if self.url.startswith(SENTINEL_SCHEMES):
            try:
                parse_sentinel_url(self.url)
            except ValueError as exc:
                raise ValueError(f"url: {exc}") from None


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SENTINEL_PORT = 26379


class SentinelUrl(msgspec.Struct, frozen=True):
    """What a redis+sentinel:// URL says: where the sentinels are and which primary to ask for."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_sentinel_url(url: str) -> SentinelUrl:
    """`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/SERVICE[/db]`;
    ValueError saying what is wrong otherwise. Port 26379 unless given."""
    example = "like redis+sentinel://:PASSWORD@sentinel-1:26379,sentinel-2:26379/pyfilter/0"
    scheme, _, rest = url.partition("://")
    where, _, path = rest.partition("/")
    auth, _, hosts = where.rpartition("@")
    username = password = None
    if auth:
        user, _, secret = auth.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = []
    for item in hosts.split(","):
        m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?", item)
        if not m or not 0 < int(m.group(2) or SENTINEL_PORT) < 65536:
            raise ValueError(f"sentinel {item!r} is not host:port; expected a URL {example}")
        sentinels.append((m.group(1).strip("[]"), int(m.group(2) or SENTINEL_PORT)))
    service, _, db = path.partition("/")
    if not service:
        raise ValueError(f"no service name (the primary's name in the sentinels) after the hosts; "
                         f"expected a URL {example}")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number; expected a URL {example}")
    return SentinelUrl(sentinels, unquote(service), int(db or 0), username, password,
                       tls=scheme == "rediss+sentinel")


class CollectorConfig(msgspec.Struct, forbid_unknown_fields=True):
    sources: list[Source] = []
    batch_lines: Annotated[int, msgspec.Meta(ge=1)] = 1000
    # How often files are checked for new lines where inotify cannot tell
    # (half of it, on average, is then added to the time from a log line to
    # its ban: docs/latency.md). With inotify, files are read as soon as they
    # change, and looked at anyway every max(poll_interval, 5 s).
    poll_interval: Annotated[float, msgspec.Meta(gt=0)] = 0.05
    max_line_bytes: Annotated[int, msgspec.Meta(ge=256)] = 16384


class DetectorConfig(msgspec.Struct, forbid_unknown_fields=True):
    # A batch a replica took but did not finish in this long is taken over
    # by another replica (the first one is presumed dead).
    claim_idle: Seconds = Seconds(30)


class EnforcerConfig(msgspec.Struct, forbid_unknown_fields=True):
    # "iptables": ipset sets + iptables rules; "auto": nftables if the kernel has it, else iptables.
    backend: Literal["nftables", "iptables", "auto", "log-only"] = "nftables"
    reconcile_interval: Seconds = Seconds(60)


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True):
    """`names`: Host names the api answers to besides localhost, 127.0.0.1 and [::1]
    (others get 421). `read_token`: reads need the token too. `widest_ban_v4`,
    `widest_ban_v6`: the widest network a manual ban may cover (prefix length)."""

    listen: str = "127.0.0.1"
    port: Port = 8470
    token: str | None = None
    names: list[str] = []
    read_token: bool = False
    widest_ban_v4: Annotated[int, msgspec.Meta(ge=0, le=32)] = 16
    widest_ban_v6: Annotated[int, msgspec.Meta(ge=0, le=128)] = 32


class NetworkConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Per-network widening of bans (docs/rules.md, "Per network"): when `threshold`
    addresses of one network are banned by the detector within `findtime`, the
    network is banned for `bantime`. `ipv4`, `ipv6`: the widening steps (prefix
    lengths, narrowest first); a step past the first counts the distinct networks
    of the step before it (an IPv6 /48 counts its /64s). `widest_v4`, `widest_v6`:
    no step, and no ASN network, is wider. `asn`: the same by network owner, with
    `geoip.asn_db`. Off by default: a network is often shared (carrier NAT)."""

    enabled: bool = False
    threshold: Annotated[int, msgspec.Meta(ge=2)] = 10
    findtime: Seconds = Seconds(3600)
    bantime: Seconds = Seconds(3600)
    ipv4: list[Annotated[int, msgspec.Meta(ge=1, le=31)]] = msgspec.field(default_factory=lambda: [24])
    ipv6: list[Annotated[int, msgspec.Meta(ge=1, le=127)]] = msgspec.field(default_factory=lambda: [64, 48])
    widest_v4: Annotated[int, msgspec.Meta(ge=1, le=32)] = 16
    widest_v6: Annotated[int, msgspec.Meta(ge=1, le=128)] = 32
    asn: bool = False

    def __post_init__(self) -> None:
        if self.findtime < 1 or self.bantime == 0 or self.bantime < -1:
            raise ValueError("findtime: expected a duration; bantime: a duration, or -1 for ever")
        for name, steps, widest in (("ipv4", self.ipv4, self.widest_v4), ("ipv6", self.ipv6, self.widest_v6)):
            if steps != sorted(set(steps), reverse=True):
                raise ValueError(f"{name}: expected prefix lengths narrowest first, each once, got {steps}")
            if steps and steps[-1] < widest:
                raise ValueError(f"{name}: /{steps[-1]} is wider than widest_{name[2:]} (/{widest})")


class GeoConfig(msgspec.Struct, forbid_unknown_fields=True):
    """MaxMind-format databases (.mmdb); unset or unreadable: countries show as unknown."""

    country_db: str | None = None
    asn_db: str | None = None


class EmailConfig(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    """Mail about bans over SMTP.

    `per_address`: one mail per ban. `digest`: one mail listing every ban of
    an `interval` (sent early once `max_batch` bans are waiting). The password
    is never in the file: `password_env` names the environment variable
    that holds it.
    """

    host: str
    sender: str  # "from" in the file
    to: list[str]
    port: Port = 25
    tls: Literal["none", "starttls", "ssl"] = "none"
    username: str | None = None
    password_env: str | None = None
    mode: Literal["per_address", "digest"] = "per_address"
    interval: Seconds = Seconds(600)
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    timeout: Seconds = Seconds(30)

    def __post_init__(self) -> None:
        for address in [self.sender, *self.to]:
            if "@" not in address:
                raise ValueError(f"expected a mail address like ops@example.org, got {address!r}")
        if not self.to:
            raise ValueError("expected at least one recipient in `to`")
        if bool(self.username) != bool(self.password_env):
            raise ValueError("`username` and `password_env` go together")
        if self.interval < 1 or self.timeout < 1:
            raise ValueError("`interval` and `timeout` must be at least 1s")


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True):
    """POST one JSON object per ban (see docs/notifications.md)."""

    url: str
    timeout: Seconds = Seconds(10)
    headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {self.url!r}")
        if self.timeout < 1:
            raise ValueError("`timeout` must be at least 1s")


class NotifyConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where bans of rules with `notify: true` are announced; none set: nowhere."""

    email: EmailConfig | None = None
    webhook: WebhookConfig | None = None
    manual: bool = False  # announce bans made by hand through the api too
    network: bool = True  # announce network bans (docs/rules.md, "Per network"), their unban and expiry
    # A failed delivery is tried again after retry_initial, doubling up to
    # retry_max, and dropped (with an error logged) after give_up_after.
    retry_initial: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    retry_max: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    give_up_after: Seconds = Seconds(86400)

    @property
    def any_channel(self) -> bool:
        """Whether a channel is configured (the notifier has something to do)."""
        return self.email is not None or self.webhook is not None


class Config(msgspec.Struct, forbid_unknown_fields=True):
    host: str = ""
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    catalog_dir: str = "rules"
    whitelist: list[Cidr] = []
    collector: CollectorConfig = msgspec.field(default_factory=CollectorConfig)
    detector: DetectorConfig = msgspec.field(default_factory=DetectorConfig)
    enforcer: EnforcerConfig = msgspec.field(default_factory=EnforcerConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    geoip: GeoConfig = msgspec.field(default_factory=GeoConfig)
    network: NetworkConfig = msgspec.field(default_factory=NetworkConfig)
    notify: NotifyConfig = msgspec.field(default_factory=NotifyConfig)
    # Rule name -> overrides of the catalog entry (or a whole rule).
    rules: dict[str, dict[str, Any]] = {}


class Settings(msgspec.Struct):
    """The loaded configuration: the file's values plus the resolved rules."""

    config: Config
    rules: dict[str, Rule]
    path: str

    @property
    def host(self) -> str:
        return self.config.host


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} of the file): not a configuration file") from None
    try:
        return yaml.load(text, Loader=_LOADER) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _explain(path: Path, exc: msgspec.ValidationError, prefix: str = "") -> ConfigError:
    # msgspec says "Expected `int`, got `str` - at `$.rules[2].maxretry`";
    # operators read "pyfilter.yaml: rules[2].maxretry: expected int, got str".
    message, _, where = str(exc).rpartition(" - at ")
    if not message:
        message, where = str(exc), "$"
    where = where.strip("`").removeprefix("$").lstrip(".")
    field = ".".join(p for p in (prefix, where) if p)
    message = message.replace("`", "")
    message = message[:1].lower() + message[1:]
    return ConfigError(f"{path}: {field or '(top level)'}: {message}")


def load_rule(path: Path, name: str, overrides: dict[str, Any] | None = None,
              overrides_file: Path | None = None) -> Rule:
    """A catalog rule with the main file's overrides applied.

    An error is reported against the file that holds the bad field: the
    main configuration for an overridden setting, the catalog file otherwise.
    """
    overrides = overrides or {}
    raw = _read_yaml(path) if path.exists() else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of rule settings")
    try:
        return msgspec.convert({**raw, **overrides}, Rule, dec_hook=_decode_custom)
    except msgspec.ValidationError as exc:
        field = str(exc).rpartition("- at `$.")[2].split(".")[0].split("[")[0].rstrip("`")
        blame = overrides_file if overrides_file and field in overrides else path
        raise _explain(blame, exc, f"rules.{name}") from None


def load_catalog(catalog_dir: Path) -> dict[str, Rule]:
    """Every rule of the catalog folder, by file name (sshd.yaml -> sshd)."""
    return {p.stem: load_rule(p, p.stem) for p in sorted(catalog_dir.glob("*.yaml"))}


def load(path: str | os.PathLike[str] | None = None, rules: bool = True) -> Settings:
    """Read and validate the configuration file; raise ConfigError if bad.

    `rules=False`: leave the rule catalog unread (`Settings.rules` empty), for
    the enforcer, which acts on decisions that carry their scope."""
    file = Path(path or os.environ.get("PYFILTER_CONFIG", DEFAULT_PATH))
    raw = _read_yaml(file)
    try:
        config = msgspec.convert(raw, Config, dec_hook=_decode_custom)
    except msgspec.ValidationError as exc:
        raise _explain(file, exc) from None

    catalog_dir = (file.parent / config.catalog_dir).resolve()
    enabled: dict[str, Rule] = {}
    for name, overrides in config.rules.items() if rules else ():
        catalog_file = catalog_dir / f"{name}.yaml"
        if not catalog_file.exists() and "patterns" not in overrides:
            raise ConfigError(
                f"{file}: rules.{name}: no rule {name!r} in the catalog ({catalog_dir}) "
                "and no patterns given"
            )
        rule = load_rule(catalog_file, name, overrides, file)
        if rule.enabled:
            enabled[name] = rule

    _apply_environment(config)
    return Settings(config=config, rules=enabled, path=str(file))


# In containers the hostname is the container's id; compose mounts the host's
# /etc/hostname here so ban records name the machine.
HOST_HOSTNAME_FILE = Path("/host/etc/hostname")


def _host_name() -> str:
    try:
        name = HOST_HOSTNAME_FILE.read_text().strip()
    except OSError:
        name = ""
    return name or socket.gethostname()


def _apply_environment(config: Config) -> None:
    """Settings that deployments set per host without editing the file."""
    if url := os.environ.get("PYFILTER_REDIS_URL"):
        if url.startswith(SENTINEL_SCHEMES):
            try:
                parse_sentinel_url(url)
            except ValueError as exc:
                raise ConfigError(f"PYFILTER_REDIS_URL: {exc}") from None
        config.redis.url = url
    if password := os.environ.get("PYFILTER_REDIS_PASSWORD"):
        config.redis.password = password
    if username := os.environ.get("PYFILTER_REDIS_USERNAME"):
        config.redis.username = username
    if require := os.environ.get("PYFILTER_REDIS_REQUIRE_TLS"):
        config.redis.require_tls = require.lower() in ("1", "yes", "true")
    if ca := os.environ.get("PYFILTER_REDIS_CA"):
        config.redis.tls_ca_file = ca
    if cluster := os.environ.get("PYFILTER_REDIS_CLUSTER"):
        config.redis.cluster = cluster.lower() in ("1", "yes", "true")
    if replicas := os.environ.get("PYFILTER_REDIS_WAIT_REPLICAS"):
        if not replicas.isdigit():
            raise ConfigError(f"PYFILTER_REDIS_WAIT_REPLICAS: expected a number of replicas (0 or more), "
                              f"got {replicas!r}")
        config.redis.wait_replicas = int(replicas)
    if token := os.environ.get("PYFILTER_API_TOKEN"):
        config.api.token = token
    if listen := os.environ.get("PYFILTER_API_LISTEN"):
        config.api.listen = listen
    if names := os.environ.get("PYFILTER_API_NAMES"):  # the api's public name(s), comma-separated
        config.api.names = [*config.api.names, *(n.strip() for n in names.split(",") if n.strip())]
    config.host = os.environ.get("PYFILTER_HOST") or config.host or _host_name()
    if config.redis.require_tls and not config.redis.url.startswith(("rediss://", "rediss+sentinel://")):
        raise ConfigError(
            f"PYFILTER_REDIS_URL {_without_password(config.redis.url)}: plain TCP to the shared Redis; use "
            "rediss:// with its CA (PYFILTER_REDIS_CA), or opt out with PYFILTER_REDIS_REQUIRE_TLS=0 "
            "on a network you trust")


def _without_password(url: str) -> str:
    head, at, tail = url.rpartition("@")
    return f"{head.rpartition(':')[0]}:***@{tail}" if at else url
