"""Network addresses: which hosts keep their traffic on this machine (for where a key or an open server may go)."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for localhost (and *.localhost), 127.0.0.0/8 and ::1: hosts whose traffic never leaves the machine. Any
    other name may resolve anywhere."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["is_loopback_host"]
