"""``python -m kmsemu``: the same command line as ``kmsemu``."""

from kmsemu.cli import main

main()
