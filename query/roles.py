"""The roles an API key can have and what each may do (checked by query/auth.py; named by the CLI)."""

from __future__ import annotations

ROLES = ("reader", "writer", "admin", "ingest")
#: What each role may do. ``ingest`` only pushes (to ``loglake receive``): the key an agent holds
#: on every node, which reads nothing if it leaks. A writer pushes too.
GRANTS = {"reader": frozenset({"reader"}), "ingest": frozenset({"ingest"}),
          "writer": frozenset({"reader", "writer", "ingest"}), "admin": frozenset(ROLES)}
