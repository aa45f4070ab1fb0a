"""Where the MAK service keeps keys and activations: the interface (``base``), its SQL
(``sql``) for SQLite and PostgreSQL, and the licensing portal's tables (``portal``)."""
