"""Network namespaces for kernel firewall tests, and real TCP traffic between them.

Every namespace here is made by the test that uses it and deleted after, so
the machine's own firewall and network are never touched. Addresses come
only from 198.51.100.0/24 and 2001:db8::/32.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import threading

PORT = 8022


def sh(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@contextlib.contextmanager
def new_netns():
    name = f"pf-test-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


@contextlib.contextmanager
def inside(name: str):
    """Switch this thread into namespace `name`: sockets opened meanwhile belong to it."""
    from pyroute2.netns import popns, pushns

    host = os.stat("/proc/self/ns/net").st_ino
    pushns(name)
    try:
        # The guard that keeps the machine's own firewall out of reach.
        assert os.stat("/proc/self/ns/net").st_ino != host, "still in the host's network namespace"
        yield
    finally:
        popns()


def link(ns_a: str, dev_a: str, address_a: str, ns_b: str, dev_b: str, address_b: str) -> None:
    """A veth pair between two namespaces, each end up with its address (CIDR form)."""
    sh("ip", "-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
    for ns, dev, address in ((ns_a, dev_a, address_a), (ns_b, dev_b, address_b)):
        flags = ["-6"] if ":" in address else []
        sh("ip", "-n", ns, *flags, "addr", "add", address, "dev", dev, *(["nodad"] if flags else []))
        sh("ip", "-n", ns, "link", "set", dev, "up")


@contextlib.contextmanager
def tcp_server(netns: str, address: str, port: int = PORT):
    """A listener in `netns` that accepts and closes every connection."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with inside(netns):
        server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def connect_result(netns: str, source: str, server: str, port: int = PORT, timeout: float = 0.5) -> str:
    """"open", "refused" (a reset: REJECT), or "timeout"/"unreachable" (DROP, or no route).

    A dropped SYN is only told apart from a slow answer by waiting, so checks
    that expect a connection to open use `connects`, which waits longer: a
    busy machine must not turn an open port into a failure.
    """
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with inside(netns):
        client = socket.socket(family, socket.SOCK_STREAM)
    with client:
        client.settimeout(timeout)
        client.bind((source, 0))
        try:
            client.connect((server, port))
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"
        except OSError:
            return "unreachable"
        return "open"


def connects(netns: str, source: str, server: str, port: int = PORT) -> bool:
    """Whether a TCP connection from `source` (in `netns`) to the server opens within 3 s."""
    return connect_result(netns, source, server, port, timeout=3.0) == "open"


def run_backend(netns: str, make_backend, scenario, init: bool = True):
    """Run `scenario(backend)` inside `netns` with a fresh backend, closed afterwards."""
    async def main():
        backend = make_backend()
        try:
            if init:
                await backend.init()
            return await scenario(backend)
        finally:
            await backend.close()

    with inside(netns):
        return asyncio.run(main())


@contextlib.contextmanager
def loopback_relay(netns: str, ports: list[int]):
    """Make 127.0.0.1:PORT inside `netns` lead to 127.0.0.1:PORT of this machine's
    loopback, for each port: a process run in the namespace (its kernel firewall
    its own) reaches services the test started on loopback (a Redis Cluster, whose
    nodes announce loopback addresses) by the same addresses. Nothing but the
    namespace's loopback and the machine's is involved."""
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    listeners = []
    for port in ports:
        with inside(netns):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listeners.append(listener)
        threading.Thread(target=_relay_accept, args=(listener, port), daemon=True).start()
    try:
        yield
    finally:
        for listener in listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()


def _relay_accept(listener: socket.socket, port: int) -> None:
    while True:
        try:
            inner, _ = listener.accept()
        except OSError:
            return
        try:
            outer = socket.create_connection(("127.0.0.1", port))  # this thread is in the machine's namespace
        except OSError:
            inner.close()
            continue
        for a, b in ((inner, outer), (outer, inner)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for s in (source, sink):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
