"""What Docker's own files say about its containers, read without asking the engine.

Docker keeps one folder per container in its containers folder
(`/var/lib/docker/containers/ID/`): `config.v2.json` (name, image, labels,
state, addresses), `hostconfig.json` (log driver) and, with the json-file
driver (Docker's default), the log `ID-json.log`, one JSON object per line:

    {"log":"text\\n","stream":"stderr","time":"2026-11-21T20:19:28.551146123Z"}

`Folder.containers()` reads the folders (only what is needed: never the
environment, which may hold secrets); the rest are pure functions: which
program's log a container holds (its image, or its `pyfilter.rules` label)
and what one log line says.
"""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import datetime, timezone
from fnmatch import fnmatchcase

import msgspec

LOG_DRIVER = "json-file"
RULES_LABEL = "pyfilter.rules"
CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")

# Image (registry, tag and digest left out) -> the program whose log the
# container writes, the first glob that matches wins. Each program is one
# that the catalog's rules read (`programs:` in config/rules/*.yaml).
DEFAULT_IMAGES: tuple[tuple[str, str], ...] = (
    ("*nginx*", "nginx"),  # nginx, bitnami/nginx, nginxinc/nginx-unprivileged, linuxserver/nginx
    ("*openresty*", "nginx"),
    ("httpd", "apache2"),
    ("*/httpd", "apache2"),
    ("bitnami/apache", "apache2"),  # not *apache*: the Apache foundation's images (apache/kafka...)
    ("*/apache2", "apache2"),
    ("*traefik*", "traefik"),
    ("*caddy*", "caddy"),
    ("*haproxy*", "haproxy"),
    ("*lighttpd*", "lighttpd"),
    ("*gitea*", "gitea"),
    ("*forgejo*", "gitea"),
    ("*vaultwarden*", "vaultwarden"),
    ("bitwardenrs/*", "vaultwarden"),
    ("bitwarden/*", "bitwarden"),
    ("*postfix*", "postfix/smtpd"),  # syslog-style lines name their own program
    ("*mailserver*", "postfix/smtpd"),  # docker-mailserver: postfix and dovecot, headers name each
    ("*dovecot*", "dovecot"),
    ("*exim*", "exim"),
    ("*roundcube*", "roundcube"),
    ("*sogo*", "sogod"),
    ("*vsftpd*", "vsftpd"),
    ("*proftpd*", "proftpd"),
    ("*pure-ftpd*", "pure-ftpd"),
    ("*openssh*", "sshd"),  # linuxserver/openssh-server
    ("mysql", "mysqld"),
    ("*/mysql", "mysqld"),
    ("*mariadb*", "mysqld"),
    ("*mongo*", "mongod"),
    ("*grafana*", "grafana"),
    ("*home-assistant*", "homeassistant"),
    ("*gitlab*", "gitlab"),
    ("*guacamole*", "guacamole"),
    ("*squid*", "squid"),
    ("*openvpn*", "openvpn"),
    ("*asterisk*", "asterisk"),
    ("*ejabberd*", "ejabberd"),
    ("*mumble*", "murmurd"),
    ("*murmur*", "murmurd"),
    ("*znc*", "znc"),
)


class Container(msgspec.Struct, frozen=True):
    """One container, as its folder describes it."""

    id: str
    name: str
    image: str
    labels: dict[str, str]
    running: bool
    driver: str  # its log driver
    # While it runs: its own addresses, and the networks it is attached to.
    addresses: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()

    def log_name(self) -> str:
        return f"{self.id}-json.log"


class _Endpoint(msgspec.Struct):
    IPAddress: str = ""
    IPPrefixLen: int = 0
    GlobalIPv6Address: str = ""
    GlobalIPv6PrefixLen: int = 0


class _NetworkSettings(msgspec.Struct):
    Networks: dict[str, _Endpoint] | None = None


class _ContainerConfig(msgspec.Struct):
    Image: str = ""
    Labels: dict[str, str] | None = None


class _State(msgspec.Struct):
    Running: bool = False


class _Config(msgspec.Struct):
    """The parts of config.v2.json we read (msgspec skips the rest unparsed)."""

    Name: str = ""
    Config: _ContainerConfig = msgspec.field(default_factory=_ContainerConfig)
    State: _State = msgspec.field(default_factory=_State)
    NetworkSettings: _NetworkSettings = msgspec.field(default_factory=_NetworkSettings)


class _LogConfig(msgspec.Struct):
    Type: str = ""


class _HostConfig(msgspec.Struct):
    LogConfig: _LogConfig = msgspec.field(default_factory=_LogConfig)


_config_decoder = msgspec.json.Decoder(_Config)
_hostconfig_decoder = msgspec.json.Decoder(_HostConfig)


def parse_container(cid: str, config: bytes, hostconfig: bytes | None) -> Container:
    """A container from its config.v2.json and hostconfig.json (raises on bad JSON)."""
    c = _config_decoder.decode(config)
    driver = _hostconfig_decoder.decode(hostconfig).LogConfig.Type if hostconfig else ""
    addresses, networks = set(), set()
    if c.State.Running:
        for endpoint in (c.NetworkSettings.Networks or {}).values():
            for address, prefix in ((endpoint.IPAddress, endpoint.IPPrefixLen),
                                    (endpoint.GlobalIPv6Address, endpoint.GlobalIPv6PrefixLen)):
                if not address:
                    continue
                try:
                    interface = ipaddress.ip_interface(f"{address}/{prefix or (32 if '.' in address else 128)}")
                except ValueError:
                    continue
                addresses.add(str(interface.ip))
                if interface.network.prefixlen < interface.network.max_prefixlen:
                    networks.add(str(interface.network))
    return Container(cid, c.Name.lstrip("/"), c.Config.Image, dict(c.Config.Labels or {}),
                     c.State.Running, driver or LOG_DRIVER, tuple(sorted(addresses)), tuple(sorted(networks)))


class Folder:
    """Docker's containers folder; re-reads a container's files only when they changed."""

    def __init__(self, path: str):
        self.path = path
        self._cache: dict[str, tuple[tuple, Container]] = {}

    def containers(self) -> list[Container]:
        """Every container with a readable config (raises OSError if the folder is unreadable)."""
        found, cache = [], {}
        for entry in os.scandir(self.path):
            if not CONTAINER_ID.match(entry.name):
                continue
            config, hostconfig = (os.path.join(entry.path, n) for n in ("config.v2.json", "hostconfig.json"))
            try:
                stamp = tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in map(os.stat, (config, hostconfig)))
                if (hit := self._cache.get(entry.name)) and hit[0] == stamp:
                    container = hit[1]
                else:
                    with open(config, "rb") as f, open(hostconfig, "rb") as h:
                        container = parse_container(entry.name, f.read(), h.read())
            except (OSError, msgspec.DecodeError):
                continue  # being created or removed: seen at the next look
            cache[entry.name] = (stamp, container)
            found.append(container)
        self._cache = cache
        return found


def image_name(image: str) -> str:
    """`ghcr.io/owner/app:1.2@sha256:...` -> `owner/app`; `nginx` stays `nginx`."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    last = last.split(":", 1)[0]
    parts = [*head.split("/"), last] if head else [last]
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # a registry
    if len(parts) > 1 and parts[0] == "library":
        parts = parts[1:]
    return "/".join(parts).lower()


def program_for(image: str, own: dict[str, str]) -> str | None:
    """The program whose log a container of `image` writes: the source's globs, then the built-in ones."""
    name = image_name(image)
    for glob, program in [*own.items(), *DEFAULT_IMAGES]:
        if fnmatchcase(name, glob.lower()):
            return program or None
    return None


def label_rules(labels: dict[str, str]) -> list[str] | None:
    """The rules a container's `pyfilter.rules` label names (`nginx-http-auth, http-auth-401`)."""
    value = labels.get(RULES_LABEL)
    if value is None:
        return None
    return [name for name in (part.strip() for part in value.split(",")) if name]


def label_matches(labels: dict[str, str], selector: str) -> bool:
    """Whether labels carry `key` or `key=value`, as `docker ps --filter label=...` reads it."""
    key, eq, value = selector.partition("=")
    return key in labels and (not eq or labels[key] == value)


class Entry(msgspec.Struct):
    """One line of a json-file log."""

    log: str = ""
    stream: str = ""
    time: str = ""


_entry_decoder = msgspec.json.Decoder(Entry)


def decode_entry(raw: str) -> Entry | None:
    """A json-file log line, or None if it is not one (a line cut by a crash)."""
    try:
        return _entry_decoder.decode(raw)
    except msgspec.DecodeError:
        return None


def parse_time(text: str) -> float | None:
    """Epoch seconds from Docker's RFC 3339 time with nanoseconds (`...T20:19:28.551146123Z`)."""
    m = _TIME.match(text)
    if m is None:
        return None
    try:
        when = datetime(*map(int, m.group(1, 2, 3, 4, 5, 6)), tzinfo=timezone.utc)
    except ValueError:
        return None
    fraction = m.group(7) or ""
    return when.timestamp() + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")
