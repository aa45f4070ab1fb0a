"""Helpers for projects that test their activation code against kmsemu.

``BackgroundHost`` runs a real KMS host on 127.0.0.1 in a background thread;
the pytest plugin (``kmsemu.testing.plugin``, registered as a ``pytest11``
entry point) wraps it as the ``kms_host`` fixture.
"""

from kmsemu.testing.client import LabClient, make_client
from kmsemu.testing.host import BackgroundHost

__all__ = ["BackgroundHost", "LabClient", "make_client"]
