"""What the gateway must never forward to: the host's own addresses, read from /proc.

A container on a Docker bridge reaches the host through any of the host's
addresses (the bridge's, docker0's, the public one), so every one of them is
blocked as an upstream, whatever an allowlist says.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path


def host_addresses() -> list[str]:
    """Every IPv4 and IPv6 address of this host's network namespace."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for i, line in enumerate(lines):
        if "/32 host LOCAL" in line and i > 0:
            address = lines[i - 1].strip().lstrip("|-+ ").strip()
            try:
                found.add(str(ipaddress.IPv4Address(address)))
            except ValueError:
                continue
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return sorted(found)
