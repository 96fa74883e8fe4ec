"""Reaching a catalog's database behind the catalog's back, on SQLite or PostgreSQL (shared by catalog tests)."""

from __future__ import annotations

import sqlite3
from typing import Any


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def run_sql(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One statement (``?`` placeholders) on the catalog's database, behind the catalog's back."""
    if is_postgres(url):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        with db:
            return [tuple(r) for r in db.execute(sql, params).fetchall()]
    finally:
        db.close()


def integrity(url: str) -> str:
    """'ok' when the catalog's database is sound (SQLite's integrity_check; on PostgreSQL, the invariants)."""
    if not is_postgres(url):
        return str(run_sql(url, "PRAGMA integrity_check")[0][0])
    [(n, paths)] = run_sql(url, "SELECT count(*), count(DISTINCT path) FROM segments")
    [(versions,)] = run_sql(url, "SELECT count(*) FROM loglake_schema")
    return "ok" if n == paths and versions == 1 else f"{n} rows, {paths} paths, {versions} versions"
