"""DNS for the lab: an authoritative server for _vlmcs._tcp records (zone.py pure,
server.py asyncio), exports for an administrator's own DNS, and discovery."""
