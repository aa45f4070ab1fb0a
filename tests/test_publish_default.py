"""Publishing by default (behaviour.md, DNS publishing: "Published by default"): a host
given a DNS server publishes into this machine's DNS domain unless told a zone, and
``--no-dns-publish`` (slmgr /cdns) turns it off."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from kmsemu.cli import main
from kmsemu.errors import ConfigError
from kmsemu.run.host import publish_zones


@pytest.mark.parametrize(
    ("publish", "server", "off", "fqdn", "zones"),
    [
        ((), None, False, "kmshost.lab.test", ()),  # no DNS server given: nothing
        ((), "10.0.0.53", False, "kmshost.lab.test", ("lab.test",)),  # the machine's domain
        ((), "10.0.0.53", False, "KMSHOST.Corp.Example.", ("corp.example",)),
        (("other.test",), "10.0.0.53", False, "kmshost.lab.test", ("other.test",)),
        (("other.test",), None, False, "kmshost", ("other.test",)),
        ((), "10.0.0.53", True, "kmshost.lab.test", ()),  # /cdns
        ((), None, True, "kmshost", ()),
    ],
)
def test_the_zones_a_host_publishes_into(
    publish: tuple[str, ...], server: str | None, off: bool, fqdn: str, zones: tuple[str, ...]
) -> None:
    assert publish_zones(publish, server=server, off=off, fqdn=fqdn) == zones


def test_a_dns_server_and_no_domain_names_the_flags() -> None:
    with pytest.raises(ConfigError) as refused:
        publish_zones((), server="10.0.0.53", off=False, fqdn="kmshost")
    assert refused.value.detail == (
        "--dns-server publishes into this machine's DNS domain, and 'kmshost' has none: "
        "give --dns-publish ZONE (or --no-dns-publish)"
    )


@pytest.mark.parametrize(
    ("args", "fqdn", "message"),
    [
        (
            ["--no-dns-publish", "--dns-publish", "lab.test"],
            "kmshost.lab.test",
            "Error: --no-dns-publish and --dns-publish contradict each other",
        ),
        (
            ["--dns-server", "127.0.0.1:5300"],
            "kmshost",
            "Error: --dns-server publishes into this machine's DNS domain, and 'kmshost' has "
            "none: give --dns-publish ZONE (or --no-dns-publish)",
        ),
    ],
)
def test_host_serve_refuses_before_it_starts(
    args: list[str], fqdn: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda *a: fqdn)
    monkeypatch.setenv("KMSEMU_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["host", "serve", "--port", "0", *args])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == message
