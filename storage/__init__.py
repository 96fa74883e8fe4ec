"""Segments and the catalog: the record schema, Parquet writing, which files are live."""

from storage.errors import CatalogConflict, StorageError

__all__ = ["StorageError", "CatalogConflict"]
