"""Load generators: KLP/1 over TCP (``kms``), the MAK service over HTTP (``mak``), DNS
(``dns``), malformed traffic and idle connections (``hostile``), and the soak's mix of all
of them on one clock (``mixed``). ``streams`` has the asyncio helpers they share."""
