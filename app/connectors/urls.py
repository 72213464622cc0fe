"""Which connector URLs the service will call.

Only absolute ``http``/``https`` URLs without credentials. ``DSR_CONNECTOR_ALLOWED_HOSTS``
narrows the hosts (names, or literal addresses inside CIDRs): it is the place to stop
server-side request forgery, since whoever registers a connector chooses where the service
sends subjects' identities. It is checked at registration and again before every call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit


class UrlRefused(ValueError):
    pass


def check_url(url: str, *, allowed_hosts: Sequence[str]) -> str:
    try:
        parts = urlsplit(url)
        _ = parts.port  # reading it raises on a malformed port
    except ValueError as exc:
        raise UrlRefused("not a valid URL") from exc
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("must be an absolute http or https URL")
    if not parts.hostname:
        raise UrlRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not carry credentials (user:password@)")
    if parts.fragment:
        raise UrlRefused("must not carry a #fragment")
    if allowed_hosts and not host_allowed(parts.hostname, allowed_hosts):
        raise UrlRefused(f"host {parts.hostname!r} is not in DSR_CONNECTOR_ALLOWED_HOSTS")
    return url


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in allowed_hosts:
        entry = entry.strip().lower()
        if "/" in entry:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            if address is not None and address in network:
                return True
        elif entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry.rstrip("."):
            return True
    return False
