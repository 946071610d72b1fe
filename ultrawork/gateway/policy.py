"""What the gateway decides for one request: stdlib only.

Shared by the host (checking rules before anything starts) and by the addon
inside the gateway container, which has mitmproxy but not this project's
dependencies. Inputs are the plain dicts of the rules file.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping
from urllib.parse import urlsplit

# Addresses no request may reach, whatever an allowlist says: loopback, "this host",
# link-local (the cloud metadata service 169.254.169.254 lives there), multicast.
ALWAYS_BLOCKED = ("127.0.0.0/8", "0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
                  "::1/128", "::/128", "fe80::/10", "ff00::/8", "::ffff:0:0/96")
# Private ranges: blocked unless a rule names a network inside them (a lab's own upstream).
PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")

STRIPPED_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
                    "openai-organization", "anthropic-admin-api-key", "cookie",
                    # a method override turns an allowed POST into a refused DELETE at the upstream
                    "x-http-method-override", "x-http-method", "x-method-override")


def normalise_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def host_matches(pattern: str, host: str) -> bool:
    """``api.x.com`` matches only itself; ``*.x.com`` matches any name below ``x.com`` (not ``x.com``)."""
    pattern, host = normalise_host(pattern), normalise_host(host)
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def pattern_covers(wide: str, narrow: str) -> bool:
    """True when every host ``narrow`` matches is also matched by ``wide``."""
    if narrow.startswith("*."):
        return wide.startswith("*.") and host_matches(wide, "x" + narrow[1:])
    return host_matches(wide, narrow)


def host_rule(profile: Mapping, host: str) -> Mapping | None:
    """The first allow rule of ``profile`` that matches ``host``, or None."""
    for rule in profile.get("allow", ()):
        if host_matches(rule["host"], host):
            return rule
    return None


def method_allowed(rule: Mapping, method: str) -> bool:
    """Exactly one of the rule's methods (``post`` is not ``POST``: a server may read it either way)."""
    return method in rule.get("methods", ())


# A path in normal form: no dot segments, no empty segments, nothing percent-encoded that a server
# may decode into ``.``, ``/`` or ``\\`` before routing (``/v1/%2e%2e/admin`` is ``/admin`` to many).
_RISKY_ESCAPE = re.compile(r"%(2e|2f|5c|25|00)", re.I)


def normal_path(path: str) -> bool:
    """True when ``path`` (no query) has no dot segment, empty segment or encoded dot, slash or backslash."""
    if not path.startswith("/") or _RISKY_ESCAPE.search(path) or "//" in path:
        return False
    # ``..;`` is ``..`` to servlet containers (path parameters are dropped before routing)
    return not any(seg.split(";", 1)[0] in (".", "..") for seg in path.split("/")[1:]) and "\\" not in path


def path_under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or below it, segment by segment (``/v2`` does not cover ``/v2admin``)."""
    if prefix in ("", "/"):
        return True
    return path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")


def credential_for(profile: Mapping, scheme: str, host: str, port: int, path: str) -> Mapping | None:
    """The credential to inject for a request: a URL-prefix credential wins over a host one.

    A URL-prefix credential is given only to a path in normal form below its prefix: a server
    that resolves ``/v1/../admin`` or ``/v1/%2e%2e/admin`` gets no key scoped to ``/v1``."""
    best, best_len = None, -1
    for cred in profile.get("credentials", ()):
        match = cred["match"]
        if "://" in match:
            parts = urlsplit(match)
            want = (parts.scheme, normalise_host(parts.hostname or ""),
                    parts.port or (443 if parts.scheme == "https" else 80))
            if (want == (scheme, normalise_host(host), port) and normal_path(path)
                    and path_under(path, parts.path) and len(parts.path) > best_len):
                best, best_len = cred, len(parts.path)
        elif host_matches(match, host) and best_len < 0:
            best, best_len = cred, 0
    return best


def canonical_prefix(url: str) -> str:
    """``https://Host/v1`` -> ``https://host:443/v1`` so ports and case compare equal."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{normalise_host(parts.hostname or '')}:{port}{parts.path}"


def agent_for_address(agents: Mapping[str, Mapping], address: str) -> str | None:
    """The agent whose network ``address`` is in (each agent network has its own subnet)."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for name, profile in agents.items():
        subnet = profile.get("subnet")
        if subnet and ip in ipaddress.ip_network(subnet):
            return name
    return None


def _networks(cidrs: Iterable[str]) -> list:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def address_blocked(address: str, hard_blocked: Iterable[str] = (), allowed_private: Iterable[str] = ()) -> str | None:
    """Why an upstream address may not be reached, or None when it may."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return "not an IP address"
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if any(ip in net for net in _networks(ALWAYS_BLOCKED) if net.version == ip.version):
        return f"{ip} is a loopback, link-local or reserved address"
    if any(ip in net for net in _networks(hard_blocked) if net.version == ip.version):
        return f"{ip} is the host or an agent network"
    if any(ip in net for net in _networks(PRIVATE) if net.version == ip.version):
        if not any(ip in net for net in _networks(allowed_private) if net.version == ip.version):
            return f"{ip} is a private address"
    return None
