"""Log patterns: templates mined from messages (Drain over messages masked in DuckDB)."""
