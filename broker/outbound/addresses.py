"""Which URLs and which addresses the broker may reach (SECURITY.md A5, rules S0 and S1).

Both checks return the reason for a refusal, or ``None``; they never do I/O.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# S0: Synapse's DEFAULT_IP_RANGE_BLOCKLIST plus the ranges SECURITY.md adds. ``ipaddress``
# flags alone miss CGNAT, 192.88.99/24 and every IPv6 form that embeds an IPv4 address
# (measured in SECURITY.md), so an address must be global *and* outside this set.
_DENIED_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT: not is_private
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast: is_global is True
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "::1/128",
        "::/96",  # IPv4-compatible: is_global is True for ::127.0.0.1
        "::ffff:0:0/96",  # IPv4-mapped
        "64:ff9b::/96",  # NAT64
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard-only
        "2001::/32",  # Teredo
        "2001:db8::/32",
        "2002::/16",  # 6to4
        "fc00::/7",  # unique local, AWS metadata fd00:ec2::254
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_LOOPBACK_NAMES = frozenset({"localhost"})


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a mapped, compatible, 6to4, Teredo or NAT64 form, for the log."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    packed = address.packed
    if packed[:12] == bytes(12) or packed[:12] == bytes.fromhex("0064ff9b0000000000000000"):
        return ipaddress.IPv4Address(packed[12:])
    return None


def address_problem(
    text: str, *, loopback_allowed: bool, public_stand_ins: frozenset[str] = frozenset()
) -> str | None:
    """S0: why the broker must not connect to ``text``, or ``None`` when it may.

    ``loopback_allowed`` is development mode. ``public_stand_ins`` lets a test declare some
    loopback addresses "public", since tests may send packets to loopback only.
    """
    try:
        address: IPAddress = ipaddress.ip_address(text)
    except ValueError:
        return f"{text!r} is not an IP address"  # scoped IPv6 (fe80::1%eth0) lands here too
    if text in public_stand_ins:
        return None
    if loopback_allowed and address.is_loopback:
        return None
    label = str(address)
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            label = f"{address} (embeds {inner})"
    for network in _DENIED_NETWORKS:
        if address.version == network.version and address in network:
            return f"{label} is in the denied range {network}"
    if not address.is_global:
        return f"{label} is not a global address"
    return None


@dataclass(frozen=True)
class Target:
    """A URL that passed S1, in the form the broker requests it."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA), lower case, IPv6 without brackets
    port: int
    loopback: bool  # a development-mode loopback target

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_url(url: str, *, dev_mode: bool, allowed_ports: frozenset[int]) -> Target | str:
    """S1: the URL as a ``Target``, or the reason it is refused."""
    if len(url) > 2000 or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return "the URL is too long or contains spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"the URL does not parse: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        return f"scheme {scheme!r} is not https"
    if "@" in parts.netloc:
        return "the URL carries user information"
    raw_host = parts.hostname
    if not raw_host:
        return "the URL has no host"
    if is_ip_literal(raw_host):
        host = raw_host
        loopback = ipaddress.ip_address(raw_host).is_loopback
        if not (dev_mode and loopback):
            return f"IP-literal host {raw_host} (only loopback, and only in development mode)"
    else:
        try:
            host = idna.encode(raw_host.rstrip("."), uts46=True).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError) as exc:
            return f"the host name is not valid IDNA: {exc}"
        last = host.rsplit(".", 1)[-1]
        if last.isdigit() or last.startswith("0x"):
            # getaddrinfo reads 2130706433 or 0x7f.1 as IPv4 addresses: literals in disguise.
            return f"host {host!r} looks like a numeric address"
        loopback = host in _LOOPBACK_NAMES
    loopback = loopback and dev_mode
    if scheme == "http" and not loopback:
        return "http is allowed only to loopback hosts in development mode"
    effective_port = port if port is not None else (443 if scheme == "https" else 80)
    # Development loopback servers run on any port; everything else on an allowed one.
    if not loopback and effective_port not in allowed_ports:
        return f"port {effective_port} is not allowed"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    rebuilt = f"{scheme}://{netloc}{parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return Target(url=rebuilt, scheme=scheme, host=host, port=effective_port, loopback=loopback)
