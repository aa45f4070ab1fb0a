"""The KMS host: rules and the activation handler (pure), its event log, state store, DNS
publishing and asyncio server."""
