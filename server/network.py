"""Host names a server binds: which are loopback, and how an address is written."""

from __future__ import annotations

import ipaddress


def bare_host(host: str) -> str:
    """``host`` without the brackets of an IPv6 literal (``[::1]`` -> ``::1``)."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches only this machine: ``localhost``, 127.0.0.0/8, ``::1``
    (with or without brackets); names other than localhost are not trusted to be."""
    host = bare_host(host)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 literal in brackets once (``[::1]:6334``)."""
    host = bare_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
