"""Search: the query language, planning over the catalog, the HTTP API."""
