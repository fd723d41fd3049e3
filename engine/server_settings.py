"""The HTTP server's settings, and which Host names it answers to; no web framework.

Names a browser may send in ``Host`` are allow-listed against DNS rebinding: a page
on evil.example whose name re-resolves to 127.0.0.1 still sends
``Host: evil.example``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServerSettings:
    """How the HTTP server behaves.

    Attributes:
        api_key: When set, every ``/v1`` request needs ``Authorization: Bearer KEY``.
        max_body_bytes: Larger request bodies get 413 (default 1 MiB).
        retry_after_s: ``Retry-After`` sent with 503 when the engine queue is full.
        poll_s: How often a waiting request checks that its client is still there.
        keepalive_s: Idle seconds before a stream sends an SSE comment line.
        allowed_hosts: Names accepted in the ``Host`` header (port ignored; a
            ``*.example.com`` entry accepts its subdomains, ``*`` any name, e.g.
            behind a proxy that checks it); others get 400.
        any_ip_host: Also accept any IP address as ``Host`` (a server bound to all
            interfaces cannot list its addresses; an IP cannot be DNS-rebound).
        cors_origins: Origins browsers may call the API from; none by default.
    """

    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    retry_after_s: int = 1
    poll_s: float = 0.1
    keepalive_s: float = 15.0
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    any_ip_host: bool = False
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key must be a non-empty string or None.")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}.")
        if not 0 < self.poll_s <= 5 or self.keepalive_s <= 0 or self.retry_after_s < 0:
            raise ValueError("poll_s, keepalive_s and retry_after_s must be positive.")
        if not all(isinstance(h, str) and h.strip() for h in self.allowed_hosts):
            raise ValueError(f"allowed_hosts must be names, got {self.allowed_hosts}.")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"A CORS origin looks like https://app.example, got {origin!r}."
                )


def hosts_for(bind: str, extra: tuple[str, ...] = ()) -> tuple[tuple[str, ...], bool]:
    """``(allowed_hosts, any_ip_host)`` for a server bound to ``bind``.

    The bound name itself and ``extra``; the loopback names too when ``bind`` is a
    loopback or wildcard address; any IP address when ``bind`` is a wildcard.
    """
    names = [bind.strip("[]").lower(), *(e.strip().lower() for e in extra)]
    wildcard = bind in WILDCARD_BINDS
    if wildcard or is_loopback(bind):
        names += LOOPBACK_HOSTS
    hosts = tuple(dict.fromkeys(n for n in names if n and n not in WILDCARD_BINDS))
    return hosts, wildcard


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a ``Host`` header: no port, no brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def is_allowed_host(name: str, settings: ServerSettings) -> bool:
    if not name:
        return False
    if settings.any_ip_host and _is_ip(name):
        return True
    return any(
        allowed in ("*", name)
        or (allowed.startswith("*.") and name.endswith(allowed[1:]))
        for allowed in (a.strip("[]").lower() for a in settings.allowed_hosts)
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
