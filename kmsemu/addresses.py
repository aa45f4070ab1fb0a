"""``HOST[:PORT]`` parsing, IPv6 as ``[ADDR]:PORT`` (cli.md conventions)."""

from __future__ import annotations

import ipaddress


class AddressError(ValueError):
    """An address that does not parse as ``HOST[:PORT]``; the message says why."""

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
    if ":" not in host:
        _check_name(host, text)
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"{text!r}: port must be 0-65535")
    return host, int(port_text)


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%")[0])
    except ValueError:
        raise AddressError(f"{text!r}: {host!r} is not an IPv6 address") from None


def _check_name(host: str, text: str) -> None:
    """An IPv4 address or a host name DNS can carry (IDNA labels of 1-63, 253 in all)."""
    try:
        encoded = host.rstrip(".").encode("idna")
    except UnicodeError:
        raise AddressError(f"{text!r}: {host!r} is not a host name") from None
    if len(encoded) > 253:
        raise AddressError(f"{text!r}: a host name has at most 253 characters")


def format_address(host: str, port: int) -> str:
    """``HOST:PORT`` as ``parse_address`` reads it back: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
