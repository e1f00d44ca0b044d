"""Egress policy: where the service may connect on an org's behalf (automation URLs, notification webhooks, SMTP).

Destinations come from tenant configuration, so every connection is checked when it is made, against the address
actually connected to. Refused by default: loopback, private (RFC 1918, ULA), link-local (169.254.169.254
included), multicast, unspecified, reserved, CGNAT, the IPv6 forms of those (IPv4-mapped, 6to4, NAT64), and the
service's own addresses (its listening sockets and its public URL) — the last even when the operator allows the
range they are in: the service never calls itself on an org's behalf.

The operator opens ranges with `ASTRALIS_EGRESS_ALLOW` / `--egress-allow` (addresses and CIDR ranges,
comma-separated, e.g. `10.0.0.0/8,127.0.0.1`). Names are not accepted there: the check is made on addresses,
so a name that resolves elsewhere tomorrow (DNS rebinding) gains nothing.

How it holds for HTTP: `session()` makes an aiohttp session whose connector resolves a name and refuses it when
any of its addresses is refused, then connects only to the addresses it checked; its socket factory checks the
address of every socket it opens once more (literal IPs never reach a resolver). For SMTP, `connect()` resolves,
checks every address and connects to a checked one; the caller keeps the host name for TLS (SNI, certificate).
Executors send nothing through a session that was not made here (`policy_of`). Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from engine.boundaries import IPAddress, address_kind, embedded_ipv4, parse_ip

ENV = "ASTRALIS_EGRESS_ALLOW"
WHERE = f"{ENV} / --egress-allow"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(OSError):
    """A destination the egress policy refuses; the message says which address and why."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)  # strerror carries the message through aiohttp's errors
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_allow(text: str, *, source: str = ENV) -> tuple[Network, ...]:
    """The operator's allow-list: addresses and CIDR ranges separated by commas or spaces."""
    nets: list[Network] = []
    for entry in text.replace(",", " ").split():
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{source}: '{entry}' is not an IP address or CIDR range (e.g. 10.0.0.0/8 or 127.0.0.1); "
                             "host names are not accepted because the check is made on the address connected to") \
                from None
    return tuple(nets)


@functools.lru_cache(maxsize=1024)
def _is_local(ip: str) -> bool:
    """Whether `ip` is an address of this host (binding a socket to it succeeds)."""
    parsed = ipaddress.ip_address(ip)
    if parsed.is_loopback or parsed.is_unspecified:
        return True
    family = socket.AF_INET6 if isinstance(parsed, ipaddress.IPv6Address) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
        except OSError:
            return False
    return True


class EgressPolicy:
    """Which destinations are allowed: public addresses, plus the operator's `allow` ranges, never the service's
    own addresses (`listen`: its listening host and port pairs; `public_url`: how others reach it)."""

    def __init__(self, allow: Iterable[Network] = (), *, listen: Iterable[tuple[str, int]] = (),
                 public_url: str = "") -> None:
        self.allow = tuple(allow)
        self.own: set[tuple[IPAddress | None, int]] = set()  # None: a wildcard bind, every local address
        self.own_names: set[tuple[str, int]] = set()
        for host, port in listen:
            self._own(host, int(port))
        if public_url:
            parts = urlsplit(public_url)
            if parts.hostname:
                self._own(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))

    @classmethod
    def from_text(cls, text: str, **kw: Any) -> EgressPolicy:
        """A policy from the allow-list's text (ValueError naming a bad entry)."""
        return cls(parse_allow(text), **kw)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kw: Any) -> EgressPolicy:
        """A policy from `ASTRALIS_EGRESS_ALLOW` (empty or unset: only public addresses)."""
        return cls.from_text((os.environ if env is None else env).get(ENV, ""), **kw)

    def _own(self, host: str, port: int) -> None:
        ip = parse_ip(host) if host else None
        if not host or (ip is not None and ip.is_unspecified):
            self.own.add((None, port))
        elif ip is not None:
            self.own.add((ip, port))
        else:
            self.own_names.add((host.lower().rstrip("."), port))

    async def learn(self) -> None:
        """Resolve the service's own host names (its public URL's, a listening name) into addresses, once at
        start-up, so that a connection to them by address is refused too."""
        loop = asyncio.get_running_loop()
        for host, port in list(self.own_names):
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                continue  # a public name this machine cannot resolve is not reachable from here either
            for info in infos:
                ip = parse_ip(str(info[4][0]))
                if ip is not None:
                    self.own.add((ip, port))

    def _is_own(self, ip: IPAddress, port: int) -> bool:
        candidates = {ip, *([embedded_ipv4(ip)] if embedded_ipv4(ip) else [])}
        for own_ip, own_port in self.own:
            if own_port != port:
                continue
            if own_ip is None and any(_is_local(str(c)) for c in candidates):
                return True
            if own_ip in candidates:
                return True
        return False

    def _allowed(self, ip: IPAddress) -> bool:
        inner = embedded_ipv4(ip)
        return any(ip in net or (inner is not None and inner in net) for net in self.allow)

    def refusal(self, address: str, port: int, *, host: str | None = None) -> str | None:
        """Why a connection to `address`:`port` (reached through the name `host`) is refused, or None."""
        shown = f"{host} resolves to {address}, which" if host and host != address else address
        if host and (host.lower().rstrip("."), port) in self.own_names:
            return f"egress refused: {host}:{port} is this service's own address (it never calls itself)"
        ip = parse_ip(address)
        if ip is None:
            return f"egress refused: {shown} is not an IP address"
        if self._is_own(ip, port):
            where = f"{host}:{port} ({address})" if host and host != address else f"{address} port {port}"
            return f"egress refused: {where} is this service's own address (it never calls itself)"
        kind = address_kind(ip)
        if kind is not None and not self._allowed(ip):
            return f"egress refused: {shown} is {kind} (not in {WHERE})"
        return None

    def check(self, address: str, port: int, *, host: str | None = None) -> None:
        """Raise `EgressRefused` unless a connection to `address`:`port` is allowed."""
        reason = self.refusal(address, port, host=host)
        if reason is not None:
            raise EgressRefused(reason)


# --------------------------------------------------------------------------- HTTP (aiohttp)

class EgressResolver(AbstractResolver):
    """Resolves a name and refuses it when any of its addresses is refused: the connector then connects only to
    the addresses checked here."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """The checked addresses of `host`; `EgressRefused` when one of them is refused."""
        results = await self.inner.resolve(host, port, family)
        for r in results:
            self.policy.check(str(r["host"]), int(r["port"] or port), host=host)
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self.inner.close()


class EgressConnector(aiohttp.TCPConnector):
    """A TCP connector that checks every socket it opens against the egress policy."""

    def __init__(self, policy: EgressPolicy, **kw: Any) -> None:
        self.policy = policy
        super().__init__(resolver=EgressResolver(policy), socket_factory=self._socket, **kw)

    def _socket(self, addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        self.policy.check(str(sockaddr[0]), int(sockaddr[1]))
        return socket.socket(family, type_, proto)


def session(policy: EgressPolicy, **kw: Any) -> aiohttp.ClientSession:
    """An aiohttp session whose every connection is checked against `policy` (no proxies from the environment)."""
    return aiohttp.ClientSession(connector=EgressConnector(policy), trust_env=False, **kw)


def policy_of(http: aiohttp.ClientSession) -> EgressPolicy | None:
    """The egress policy that guards a session, or None for a session not made by `session()`."""
    connector = http.connector
    return connector.policy if isinstance(connector, EgressConnector) else None


UNGUARDED = ("egress refused: the HTTP session was not made by adapters.egress.session, so no destination can be "
             "checked; nothing was sent")


def refusal_in(exc: BaseException) -> EgressRefused | None:
    """The `EgressRefused` behind an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, EgressRefused):
            return e
        todo += [getattr(e, "os_error", None), e.__cause__, e.__context__]
    return None


# --------------------------------------------------------------------------- SMTP and other plain sockets

async def connect(policy: EgressPolicy, host: str, port: int) -> socket.socket:
    """A connected non-blocking socket to `host`:`port`, after checking every address the name resolves to
    (`EgressRefused` when one is refused). Keep `host` for TLS: the socket goes to the checked address."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        policy.check(str(sockaddr[0]), int(sockaddr[1]), host=host)
    last: OSError | None = None
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last or OSError(f"{host}:{port} resolves to no address")
