"""Network addresses the user types (the local server's, an RPC server's)."""

from __future__ import annotations

import ipaddress

# The local server's (app.server) address unless the user picks another: this machine only.
SERVER_HOST = "127.0.0.1"
SERVER_PORT = 8080


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost); a
    name other than localhost may resolve to anything, so it is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
