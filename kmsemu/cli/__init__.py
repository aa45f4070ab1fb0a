"""The ``kmsemu`` command line: one click group per part, each module thin."""

from __future__ import annotations

import click

from kmsemu import __version__
from kmsemu.cli import client_verbs  # noqa: F401  (registers the client verbs)
from kmsemu.cli.catalog import catalog
from kmsemu.cli.client import client
from kmsemu.cli.dns import dns
from kmsemu.cli.host import host
from kmsemu.cli.keys import keys
from kmsemu.cli.lab import lab
from kmsemu.cli.mak import mak
from kmsemu.cli.portal import portal
from kmsemu.cli.sim import sim


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmsemu")
def main() -> None:
    """kmsemu: a volume-activation lab (KMS host and clients over the KLP/1 lab protocol).

    It speaks its own lab protocol and mints its own lab keys: it never
    activates a genuine Windows or Office.
    """


main.add_command(catalog)
main.add_command(host)
main.add_command(client)
main.add_command(keys)
main.add_command(dns)
main.add_command(mak)
main.add_command(portal)
main.add_command(lab)
main.add_command(sim)
