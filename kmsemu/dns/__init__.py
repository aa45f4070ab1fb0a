"""DNS for the lab: an authoritative server for _vlmcs._tcp records (zone.py and
update.py below authority.py, all pure; server.py asyncio) and exports for an
administrator's own DNS."""

from typing import Final

#: The lab DNS's port (``kmsemu dns serve``, ``kmsemu lab``); here, not in ``server``, so
#: the command line shows it without loading asyncio.
DEFAULT_PORT: Final = 5300
#: Who may change zones by RFC 2136 UPDATE: nobody, peers on loopback, anyone.
UPDATE_POLICIES: Final = ("none", "loopback", "any")
#: What ``kmsemu dns export`` writes (``kmsemu.dns.export``).
EXPORT_FORMATS: Final = ("bind", "powershell", "nsupdate")
