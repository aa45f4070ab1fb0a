"""``HOST[:PORT]`` parsing, IPv6 as ``[ADDR]:PORT`` (cli.md conventions)."""

from __future__ import annotations

import ipaddress


class AddressError(ValueError):
    pass


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """Split ``HOST[:PORT]``; a bare IPv6 address (two or more colons) has no port."""
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise AddressError(f"{text!r}: missing ']'")
        if rest and not rest.startswith(":"):
            raise AddressError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else ""
        _check_ipv6(host, text)
    elif text.count(":") >= 2:
        host, port_text = text, ""
        _check_ipv6(host, text)
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise AddressError(f"{text!r}: missing host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"{text!r}: port must be 0-65535")
    return host, int(port_text)


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%")[0])
    except ValueError:
        raise AddressError(f"{text!r}: {host!r} is not an IPv6 address") from None


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
