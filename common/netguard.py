"""SSRF guard for outbound requests to user-supplied URLs (webhooks).

Validate-then-fetch is not enough: a hostname can resolve to a public address when checked and to
127.0.0.1 a moment later (DNS rebinding). So `resolve()` checks every address the name has and
returns one pinned address, and `post()` connects to that address while sending the original
`Host` header and TLS server name. Redirects are never followed (a 3xx is a failed delivery).

`post()` has one wall-clock deadline for the whole exchange (connect, TLS, send, status line and
headers): per-read timeouts would let a receiver that trickles a byte a second hold a worker for
ever. The answer's body is never read. It uses httpcore directly, which logs no URLs (httpx logs
every request's full URL, query secrets included, at INFO).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import urlsplit

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048

# Cloud metadata endpoints stay refused even when an operator allowlists private ranges
# (a webhook to them would hand out instance credentials).
# AWS IMDS (IPv4, IPv6), ECS task credentials, EKS Pod Identity (IPv4, IPv6), Alibaba Cloud.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "169.254.170.23", "fd00:ec2::23",
              "100.100.100.200")
)
DEFAULT_PORTS = frozenset({80, 443})
# Ranges Python's `is_global` does not flag (3.11) but that are not routable public unicast.
_EXTRA_BLOCKED = tuple(
    ipaddress.ip_network(n)
    for n in ("100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "::/8", "fec0::/10", "64:ff9b:1::/48")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeURL(ValueError):
    """The URL may not be fetched; `code` is a stable API error code, `message` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class SendError(Exception):
    """No answer came back; `kind` is `timeout` (the deadline passed) or `connection` (refused, reset, TLS,
    not HTTP), `message` says more (no URL in it: it is shown to the webhook's owner and logged)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


_PORT_RANGE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")  # ASCII digits only


def parse_ports(spec: str) -> tuple[tuple[int, int], ...]:
    """"8080, 9000-9100" → ((8080, 8080), (9000, 9100)); ValueError for anything else."""
    ranges = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        match = _PORT_RANGE.fullmatch(part)
        if match is None:
            raise ValueError(f"port {part!r} is not a number or a range like 9000-9100")
        first, last = int(match[1]), int(match[2] or match[1])
        if not 0 < first <= last < 65536:
            raise ValueError(f"port range {part!r} is not within 1-65535")
        ranges.append((first, last))
    return tuple(ranges)


@dataclass(frozen=True)
class NetPolicy:
    """What outbound URLs may reach. `allow` lists networks exempt from the private-range ban; ports other
    than 80 and 443 must be in `ports` (ranges); `deadline_s` bounds one whole request."""

    allow: tuple[IPNetwork, ...] = ()
    ports: tuple[tuple[int, int], ...] = ()
    schemes: tuple[str, ...] = ("http", "https")
    deadline_s: float = 10.0

    @classmethod
    def from_strings(cls, allow: Iterable[str] = (), ports: str = "", **kwargs) -> NetPolicy:
        """Build from CIDR strings such as "127.0.0.0/8" or "::1/128" and a port list "8080,9000-9100"."""
        return cls(allow=tuple(ipaddress.ip_network(a.strip(), strict=False) for a in allow if a.strip()),
                   ports=parse_ports(ports), **kwargs)

    def port_allowed(self, port: int) -> bool:
        return port in DEFAULT_PORTS or any(first <= port <= last for first, last in self.ports)


@dataclass(frozen=True)
class Target:
    """A URL checked by `resolve`: where to connect (`ip`) and what to tell the server."""

    url: str
    scheme: str
    host: str
    port: int
    ip: IPAddress
    path: str = field(default="/")

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"

    @property
    def pinned_url(self) -> str:
        """The URL with the host replaced by the pinned address (what the socket connects to)."""
        addr = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        return f"{self.scheme}://{addr}:{self.port}{self.path}"


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden in an IPv4-mapped, 6to4 or NAT64 IPv6 address, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address, or None when it is."""
    if ip in METADATA_ADDRESSES:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped IPv6 address"
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = blocked_reason(inner)
            return f"IPv4 {inner} inside IPv6: {reason}" if reason else None
    checks = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("reserved", any(ip in n for n in _EXTRA_BLOCKED if n.version == ip.version)),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


# The refusal names neither the address nor the kind of range: a host name's internal address is exactly what
# someone probing the network would like to learn from the 422 (or from the delivery log).
FORBIDDEN_ADDRESS = "the host resolves to a private/reserved address"


def check_address(ip: IPAddress, policy: NetPolicy) -> None:
    """Raise UnsafeURL unless `ip` is public or inside the operator allowlist (metadata never)."""
    if ip in METADATA_ADDRESSES or (
        isinstance(ip, ipaddress.IPv6Address) and _embedded_ipv4(ip) in METADATA_ADDRESSES
    ):
        raise UnsafeURL("url_forbidden_address", FORBIDDEN_ADDRESS)
    if any(ip.version == n.version and ip in n for n in policy.allow):
        return
    if blocked_reason(ip):
        raise UnsafeURL("url_forbidden_address", FORBIDDEN_ADDRESS)


def parse(url: str, policy: NetPolicy) -> tuple[str, str, int, str]:
    """Syntactic checks: scheme, no credentials, a host, a valid port. Returns (scheme, host, port, path)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise UnsafeURL("url_invalid", f"URL must be a non-empty string of at most {MAX_URL_LENGTH} chars")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise UnsafeURL("url_invalid", "URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeURL("url_invalid", f"URL does not parse: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        raise UnsafeURL("url_scheme_forbidden", f"scheme {scheme or '(none)'!r} is not one of {policy.schemes}")
    if parts.username is not None or parts.password is not None:
        raise UnsafeURL("url_invalid", "credentials in the URL are not accepted")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeURL("url_invalid", "URL has no host")
    port = port or (443 if scheme == "https" else 80)
    if not 0 < port < 65536:
        raise UnsafeURL("url_invalid", "port out of range")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port, path


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for `host` (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def resolve(url: str, policy: NetPolicy, resolver: Resolver = system_resolver) -> Target:
    """Check `url` and pin it to one address; every address the host resolves to must be allowed."""
    scheme, host, port, path = parse(url, policy)
    try:
        literal = ipaddress.ip_address(host)
        addresses: list[IPAddress] = [literal]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(a) for a in resolver(host, port)]
        except (OSError, UnicodeError) as e:
            raise UnsafeURL("url_unresolvable", f"cannot resolve host {host!r}: {e}") from None
    if not addresses:
        raise UnsafeURL("url_unresolvable", f"host {host!r} has no addresses")
    for ip in addresses:
        check_address(ip, policy)
    if not policy.port_allowed(port):
        raise UnsafeURL("url_forbidden_port", f"port {port} is not allowed (80 and 443 are; an operator can allow "
                        "others with WEBHOOK_ALLOW_PORTS)")
    return Target(url=url, scheme=scheme, host=host, port=port, ip=addresses[0], path=path)


@cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context per process (building one per request costs ~0.3 s of CPU)."""
    return ssl.create_default_context()


@dataclass(frozen=True)
class Answer:
    """The status line and headers of a response (names lower-cased); its body is never read."""

    status_code: int
    headers: dict[str, str]


def post(target: Target, content: bytes, headers: Mapping[str, str], policy: NetPolicy) -> Answer:
    """POST `content` to the pinned address of `target` within `policy.deadline_s` seconds, wall clock.

    No redirects, no proxies, TLS verified against the original host name. Raises SendError.
    """
    return asyncio.run(_within(policy.deadline_s, _post(target, content, headers)))


def resolve_and_post(
    url: str, content: bytes, headers: Mapping[str, str], policy: NetPolicy, resolver: Resolver = system_resolver
) -> Answer:
    """`resolve` then `post`, both inside one deadline: the URL's owner runs its DNS server too, and an answer
    that takes 30 s holds a worker as surely as a trickling receiver. Raises UnsafeURL or SendError."""
    async def both() -> Answer:
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(_dns_threads(), resolve, url, policy, resolver)
        return await _post(target, content, headers)

    return asyncio.run(_within(policy.deadline_s, both()))


@cache
def _dns_threads() -> ThreadPoolExecutor:
    # Not the loop's default executor: `asyncio.run` waits for that one at exit, and a stuck lookup would hold
    # the attempt past its deadline. A lookup cut off here finishes in its thread when the resolver gives up.
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="netguard-dns")


async def _within(deadline_s: float, exchange: Awaitable[Answer]) -> Answer:
    try:
        async with asyncio.timeout(deadline_s):
            return await exchange
    except (TimeoutError, httpcore.TimeoutException):
        raise SendError("timeout", f"no answer within {deadline_s:g} s") from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, ssl.SSLError,
            OSError) as e:
        raise SendError("connection", f"{type(e).__name__}: {e}"[:300]) from None


async def _post(target: Target, content: bytes, headers: Mapping[str, str]) -> Answer:
    send_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
                    if k.lower() not in ("host", "content-length")]
    send_headers.insert(0, (b"Host", target.host_header.encode("ascii")))
    send_headers.append((b"Content-Length", str(len(content)).encode()))
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    async with httpcore.AsyncConnectionPool(ssl_context=_tls_context(), max_connections=1) as pool:
        async with pool.stream("POST", target.pinned_url, headers=send_headers, content=content,
                               extensions=extensions) as response:
            names = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
            return Answer(response.status, names)
