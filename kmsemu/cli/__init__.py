"""The ``kmsemu`` command line: one click group per part, each module thin.

The groups load when invoked: ``kmsemu --help`` and ``kmsemu keys check`` import
neither servers nor web frameworks (``tests/test_layers.py`` holds that line). The
root's help lists each command from ``COMMANDS`` below, so listing them imports
nothing either; a test keeps those lines equal to the commands' own help.
"""

from __future__ import annotations

import importlib
from typing import Final

import click

from kmsemu import __version__
from kmsemu.cli.common import KmsemuGroup

#: name -> (module, attribute, the first line of its help)
COMMANDS: Final[dict[str, tuple[str, str, str]]] = {
    "catalog": (
        "kmsemu.cli.catalog",
        "catalog",
        "List every product with its application id, SKU id, KMS count id and threshold.",
    ),
    "client": (
        "kmsemu.cli.client_verbs",
        "client",
        "A KMS client: a machine shaped like slmgr (ipk, ato, dlv...), or one activation.",
    ),
    "dns": (
        "kmsemu.cli.dns",
        "dns",
        "DNS for the lab: _vlmcs._tcp SRV records, served or exported.",
    ),
    "host": ("kmsemu.cli.host", "host", "The KMS host: serve KLP/1 activations and report counts."),
    "keys": (
        "kmsemu.cli.keys",
        "keys",
        "Lab product keys (this project's own format; never real product keys).",
    ),
    "lab": (
        "kmsemu.cli.lab",
        "lab",
        "Run the whole lab in one process: KMS host, DNS, MAK service and dashboard.",
    ),
    "mak": (
        "kmsemu.cli.mak",
        "mak",
        "The MAK service: activation counts, online, phone and proxy activation.",
    ),
    "ospp": (
        "kmsemu.cli.ospp",
        "ospp",
        "Drive a client machine's Office with ospp's own syntax: /dstatus, /act, /inpkey:KEY...",
    ),
    "portal": (
        "kmsemu.cli.portal",
        "portal",
        "The licensing portal: organisations, subscription keys, subscriptions, licences.",
    ),
    "sim": ("kmsemu.cli.sim", "sim", "The fleet simulator: a year of a network in seconds."),
    "slmgr": (
        "kmsemu.cli.slmgr",
        "slmgr",
        "Drive a client machine with slmgr's own syntax: /ipk KEY, /ato, /dlv [all], /xpr...",
    ),
}


class LazyGroup(KmsemuGroup):
    """A group whose commands are imported when one is invoked (or asked for by name)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every command's name, imported or not, in order."""
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command of that name, importing its module the first time it is asked for."""
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute, _ = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from ``COMMANDS``: no group is imported to show it."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit))
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kmsemu")
def main() -> None:
    """kmsemu: a volume-activation lab (KMS host and clients over the KLP/1 lab protocol).

    It speaks its own lab protocol and mints its own lab keys: it never
    activates a genuine Windows or Office.
    """
