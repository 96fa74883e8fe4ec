"""The storage package's exceptions."""


class StorageError(Exception):
    """Base of everything storage raises."""


class CatalogConflict(StorageError):
    """Another writer moved the offsets this commit was based on; nothing was recorded."""


class CatalogUnavailable(StorageError):
    """The catalog database cannot be opened or is of an unknown schema version."""


class BackupError(StorageError):
    """A backup could not be made, read or restored (what and why in the message)."""


class IcebergError(StorageError):
    """The Iceberg mirror could not be read or written."""
