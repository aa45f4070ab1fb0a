"""Lab keys (shared/spec/keys.md): product keys, hardware ids, installation and
confirmation ids. Pure code, shared by the client emulator and the MAK service."""
