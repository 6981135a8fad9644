"""Outbound URL safety: requests to URLs that API clients supply (webhooks, report sources) go to
public addresses only, so nobody can use Offload to reach loopback, the cluster network or a cloud
metadata service.

Two checks, both on resolved addresses, never on the URL's spelling (``http://2130706433/`` and
``http://0x7f.1/`` are 127.0.0.1):

- ``OutboundPolicy.check_url`` at submit time, so a bad URL is a 422 rather than a failed job;
- ``OutboundPolicy.client`` at delivery time: its connections resolve the host, vet every answer
  and connect to exactly the vetted address, so a DNS answer that changes between submit and
  delivery (DNS rebinding) cannot slip a private address through. TLS still verifies the
  certificate for the URL's host name.

``OFFLOAD_OUTBOUND_ALLOWED_HOSTS`` exempts hosts from the public-address rule. Each entry is one of:

- a host name (``hooks.internal``), matched case-insensitively and exempt whatever it resolves
  to. A leading dot (``.internal.example``) exempts every subdomain of that name, not the name
  itself (list both if both are wanted). No other wildcards.
- an IP address (``10.0.0.5``, ``::1``) or network (``10.0.0.0/8``): resolved addresses inside
  it are exempt, whatever name the URL used.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import httpcore
import httpx

if TYPE_CHECKING:
    from offload_core.settings import Settings

ALLOWED_HOSTS_SETTING = "OFFLOAD_OUTBOUND_ALLOWED_HOSTS"
SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Longer URLs are refused before any parsing or DNS work.
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the host's addresses as IP strings; raises OSError when the host does not resolve.
Resolver = Callable[[str, int], Sequence[str]]

# RFC 6052 well-known NAT64 prefix: traffic goes to the IPv4 address in the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


class UnsafeURL(ValueError):
    """The URL may not be fetched; str(exc) says why and what to do (e.g. name the setting)."""


def system_resolve(host: str, port: int) -> list[str]:
    """Every address getaddrinfo gives for host, in its order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that traffic to this IPv6 address really goes to (6to4, Teredo, NAT64)."""
    embedded: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        embedded.append(ip.sixtofour)
    if ip.teredo is not None:
        embedded.extend(ip.teredo)
    if ip in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return embedded


def non_public(ip: IPAddress) -> tuple[str, IPAddress] | None:
    """None if ip is a public unicast address; otherwise why not (e.g. "loopback") and the address
    that is so, which for IPv6 forms of an IPv4 address (mapped, 6to4, NAT64) is the IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return non_public(ip.ipv4_mapped)
        embedded = _embedded_ipv4(ip)
        for inner in embedded:
            if (problem := non_public(inner)) is not None:
                return problem
        if ip in _NAT64 and embedded:
            # The prefix itself counts as reserved, but the IPv4 address it carries was public.
            return None
        if ip.is_site_local:
            return "site-local", ip
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("shared (carrier-grade NAT)", isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-global", not ip.is_global),
    )
    return next(((kind, ip) for kind, matches in checks if matches), None)


def _same_address(host: str, ip: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(host) == ip
    except ValueError:
        return False


def _host_key(host: str) -> str:
    return host.lower().rstrip(".")


def _parse_allowed(entries: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...], tuple[IPNetwork, ...]]:
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.removeprefix("[").removesuffix("]"), strict=False))
            continue
        except ValueError:
            pass
        name = _host_key(entry)
        subdomains = name.startswith(".")
        labels = name.removeprefix(".").split(".")
        if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise ValueError(
                f"{ALLOWED_HOSTS_SETTING}: {raw!r} is not a host name, IP address or network; use e.g. "
                "hooks.internal, .internal.example (its subdomains), 10.0.0.5 or 10.0.0.0/8, "
                "without scheme, port or wildcard (host names in ASCII/punycode)"
            )
        if subdomains:
            suffixes.append(name)
        else:
            names.add(name)
    return frozenset(names), tuple(suffixes), tuple(networks)


class OutboundPolicy:
    """Which outbound URLs may be fetched; see the module docstring for the rule and the
    allow-list syntax. ``resolve`` is the name resolver (getaddrinfo unless given)."""

    def __init__(self, allowed_hosts: Sequence[str], *, resolve: Resolver = system_resolve) -> None:
        self._names, self._suffixes, self._networks = _parse_allowed(allowed_hosts)
        self._resolve = resolve

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        return cls(settings.OUTBOUND_ALLOWED_HOSTS)

    def check_url(self, url: str) -> None:
        """At submit time: raise UnsafeURL unless the URL is http(s), has a host, and every address
        the host resolves to is public (or the host is allow-listed). DNS failure -> UnsafeURL too
        (message says the host does not resolve). A host name on the allow-list is not resolved
        here at all: it may exist only in the workers' network."""
        if len(url) > MAX_URL_LENGTH:
            raise UnsafeURL(f"the URL is {len(url)} characters long; at most {MAX_URL_LENGTH} are accepted")
        try:
            # httpx's parser, so this check reads the URL exactly as the delivery client will.
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise UnsafeURL(f"not a valid URL: {exc}") from exc
        if not parsed.scheme:
            raise UnsafeURL("the URL has no scheme; write it in full, e.g. https://hooks.example.com/path")
        if parsed.scheme not in SCHEMES:
            raise UnsafeURL(f"the URL scheme must be http or https, not {parsed.scheme!r}")
        if not parsed.raw_host:
            raise UnsafeURL("the URL has no host; write it in full, e.g. https://hooks.example.com/path")
        if parsed.userinfo:
            raise UnsafeURL(
                "the URL contains credentials (user:password@host), which are not accepted; "
                "put a token in the path or query string instead"
            )
        port = DEFAULT_PORTS[parsed.scheme] if parsed.port is None else parsed.port
        if not 1 <= port <= 65535:
            raise UnsafeURL(f"the URL's port {port} is not a TCP port (1-65535)")
        host = parsed.raw_host.decode("ascii")
        if self.host_is_allowed(host):
            return
        try:
            self.vetted_addresses(host, port)
        except OSError as exc:
            raise UnsafeURL(f"the host {host!r} does not resolve ({exc}); check the URL's host name") from exc

    def client(
        self, *, connect_timeout: float, read_timeout: float, verify: ssl.SSLContext | bool = True
    ) -> httpx.Client:
        """A sync httpx client for deliveries: at connect time it resolves the host itself, vets
        the resolved address again (so DNS cannot swap a public answer for a private one between
        submit and delivery), and connects to that vetted address (TLS still verifies the real
        host name, SNI = host name). Never follows redirects, ignores proxy env vars (trust_env=False),
        bounded timeouts. A refused address raises UnsafeURL from client.post(...); a host that
        does not resolve raises httpx.ConnectError, like any other connection failure.
        ``verify`` is the TLS trust (default: certifi's CA bundle), e.g. a context trusting a private CA."""
        return httpx.Client(
            transport=_VettingTransport(_VettingBackend(self), verify=verify),
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout),
            follow_redirects=False,
            trust_env=False,
        )

    def host_is_allowed(self, host: str) -> bool:
        """Whether the host name itself is on the allow-list (IP entries match addresses, not names)."""
        key = _host_key(host)
        return key in self._names or any(key.endswith(suffix) for suffix in self._suffixes)

    def address_is_allowed(self, ip: IPAddress) -> bool:
        """Whether the address is public or inside an allow-listed address or network."""
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        if any(candidate in network for candidate in candidates for network in self._networks):
            return True
        return non_public(ip) is None

    def vetted_addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for host: all it resolves to, unless one of them is refused
        (UnsafeURL). Raises OSError when the host does not resolve."""
        addresses = list(self._resolve(host, port))
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "no addresses")
        if self.host_is_allowed(host):
            return addresses
        for address in addresses:
            ip = ipaddress.ip_address(address)
            if not self.address_is_allowed(ip):
                raise UnsafeURL(self._refusal(host, ip))
        return addresses

    @staticmethod
    def _refusal(host: str, ip: IPAddress) -> str:
        kind, culprit = non_public(ip) or ("non-public", ip)
        article = "an" if kind[0] in "aeiou" else "a"
        what = f"{article} {kind} address"
        if culprit != ip:
            what = f"an IPv6 form of {culprit}, {what}"
        # The URL named the address itself (in whatever spelling) or a host name resolving to it.
        subject = f"{host} is" if _same_address(host, ip) else f"{host} resolves to {ip},"
        return (
            f"{subject} {what}; outbound requests may only go to public addresses. "
            f"To allow it, add the host name or address to {ALLOWED_HOSTS_SETTING}."
        )


class _VettingBackend(httpcore.NetworkBackend):
    """httpcore's synchronous sockets, connecting only to addresses the policy vetted just now."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self._policy.vetted_addresses(host, port)
        except OSError as exc:
            # Possibly a passing DNS outage: a connection error, which callers retry.
            raise httpcore.ConnectError(f"{host} does not resolve: {exc}") from exc
        options = list(socket_options or [])
        deadline = None if timeout is None else time.monotonic() + timeout
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        # Each address in turn, like socket.create_connection, but always an address vetted above.
        for address in addresses:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                return self._sockets.connect_tcp(
                    address, port, timeout=remaining, local_address=local_address, socket_options=options
                )
            except httpcore.ConnectTimeout as exc:
                failure = httpcore.ConnectTimeout(f"{host} ({address}): {str(exc) or 'timed out'}")
            except httpcore.ConnectError as exc:
                failure = httpcore.ConnectError(f"{host} ({address}): {exc}")
        raise failure or httpcore.ConnectTimeout(f"{host}: timed out")

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)


class _VettingTransport(httpx.HTTPTransport):
    """httpx's transport (its request handling and exception mapping) over a connection pool
    that uses the vetting backend. httpx 0.28 takes no network backend argument, so the pool it
    built is replaced by one with the same settings and that backend."""

    def __init__(self, backend: httpcore.NetworkBackend, *, verify: ssl.SSLContext | bool) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        limits = httpx.Limits()
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        if type(self._pool) is not httpcore.ConnectionPool:  # a proxied pool would bypass the backend
            raise RuntimeError(f"unexpected httpx transport pool {type(self._pool).__name__}")
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
