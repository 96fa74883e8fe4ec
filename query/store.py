"""The query side's rows in the catalog database: API keys and saved queries.

They share the catalog's database and its SQL layer (``Catalog.db``); their tables are
created by the catalog's migrations, because the schema's history is one sequence.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from storage.catalog import Catalog


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """An API key as it is stored: never the secret, only its hash."""

    id: str
    tenants: tuple[str, ...]
    role: str
    hash: str
    description: str
    created_us: int
    expires_us: int | None = None
    revoked_us: int | None = None


_KEY_COLUMNS = "id, tenants, role, hash, description, created_us, expires_us, revoked_us"


def _key_row(r: Sequence[Any]) -> ApiKeyRow:
    return ApiKeyRow(r[0], tuple(orjson.loads(r[1])), r[2], r[3], r[4], r[5], r[6], r[7])


class KeyStore:
    """API keys (table ``api_keys``)."""

    def __init__(self, catalog: Catalog) -> None:
        self.db = catalog.db

    def create_api_key(self, key: ApiKeyRow) -> None:
        with self.db.transaction() as tx:
            tx.execute(f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ({tx.dialect.params(8)})",
                       (key.id, orjson.dumps(list(key.tenants)).decode(), key.role, key.hash, key.description,
                        key.created_us, key.expires_us, key.revoked_us))

    def api_key(self, key_id: str) -> ApiKeyRow | None:
        rows = self.db.read(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id={self.db.dialect.p}", (key_id,))
        return _key_row(rows[0]) if rows else None

    def api_keys(self) -> list[ApiKeyRow]:
        return [_key_row(r) for r in self.db.read(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_us")]

    def revoke_api_key(self, key_id: str) -> bool:
        """Revoke a key; False if there is none or it was revoked already."""
        with self.db.transaction() as tx:
            p = tx.dialect.p
            return bool(tx.execute(f"UPDATE api_keys SET revoked_us={p} WHERE id={p} AND revoked_us IS NULL",
                                   (_now_us(), key_id)).rowcount)


@dataclass(frozen=True, slots=True)
class SavedQueryRow:
    """A saved query as it is stored."""

    tenant: str
    name: str
    kind: str
    query: str
    params: dict[str, Any]
    description: str
    owner: str
    created_us: int
    updated_us: int


_SAVED_COLUMNS = "tenant, name, kind, query, params, description, owner, created_us, updated_us"


def _saved_row(r: Sequence[Any]) -> SavedQueryRow:
    return SavedQueryRow(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5], r[6], r[7], r[8])


class SavedQueryStore:
    """Saved queries (table ``saved_queries``), per tenant and name."""

    def __init__(self, catalog: Catalog) -> None:
        self.db = catalog.db

    def saved_queries(self, tenant: str) -> list[SavedQueryRow]:
        rows = self.db.read(f"SELECT {_SAVED_COLUMNS} FROM saved_queries WHERE tenant={self.db.dialect.p}"
                            " ORDER BY name", (tenant,))
        return [_saved_row(r) for r in rows]

    def saved_query(self, tenant: str, name: str) -> SavedQueryRow | None:
        p = self.db.dialect.p
        rows = self.db.read(f"SELECT {_SAVED_COLUMNS} FROM saved_queries WHERE tenant={p} AND name={p}",
                            (tenant, name))
        return _saved_row(rows[0]) if rows else None

    def create_saved_query(self, q: SavedQueryRow) -> None:
        """Store a new saved query; CatalogConflict if the name is taken."""
        with self.db.transaction() as tx:
            tx.execute(f"INSERT INTO saved_queries ({_SAVED_COLUMNS}) VALUES ({tx.dialect.params(9)})",
                       (q.tenant, q.name, q.kind, q.query, orjson.dumps(q.params).decode(), q.description,
                        q.owner, q.created_us, q.updated_us))

    def replace_saved_query(self, name: str, q: SavedQueryRow) -> bool:
        """Overwrite (and perhaps rename) the saved query ``name``; False if there is none.
        CatalogConflict if renamed onto a name that is taken."""
        with self.db.transaction() as tx:
            p = tx.dialect.p
            cur = tx.execute(f"UPDATE saved_queries SET name={p}, kind={p}, query={p}, params={p},"
                             f" description={p}, owner={p}, updated_us={p} WHERE tenant={p} AND name={p}",
                             (q.name, q.kind, q.query, orjson.dumps(q.params).decode(), q.description, q.owner,
                              q.updated_us, q.tenant, name))
            return bool(cur.rowcount)

    def delete_saved_query(self, tenant: str, name: str) -> bool:
        with self.db.transaction() as tx:
            p = tx.dialect.p
            return bool(tx.execute(f"DELETE FROM saved_queries WHERE tenant={p} AND name={p}",
                                   (tenant, name)).rowcount)
