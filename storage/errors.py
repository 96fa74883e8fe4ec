"""The storage package's exceptions."""


class StorageError(Exception):
    """Base of everything storage raises."""


class CatalogConflict(StorageError):
    """Another writer moved the offsets this commit was based on; nothing was recorded."""


class CatalogUnavailable(StorageError):
    """The catalog database cannot be opened or is of an unknown schema version."""
