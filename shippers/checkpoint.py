"""Durable per-file checkpoints: where each file's acknowledged records end."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson


@dataclass(slots=True)
class FileCheckpoint:
    source_id: str     # the identity ingest deduplicates by; fixed for the file's life
    path: str          # last path the file was seen at (informational)
    offset: int        # file offset just past the last acknowledged record
    # Hash of the file's first head_len bytes: all it ever sent under source_id, acknowledged
    # or not, up to the fingerprint size; a file must begin with them to resume this checkpoint.
    head_hash: str = ""
    head_len: int = 0
    # When the file was let go (Unix time; 0 while it is read). Kept a while when compressed
    # files are read, so the .gz a rotated file becomes is known as what was already sent.
    released_at: float = 0.0


class CheckpointStore:
    """A JSON file of ``{key: FileCheckpoint}`` (key: fingerprint or inode), replaced atomically."""

    VERSION = 3

    def __init__(self, state_dir: Path) -> None:
        self.file = state_dir / "checkpoints.json"
        state_dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, FileCheckpoint]:
        try:
            data = orjson.loads(self.file.read_bytes())
        except FileNotFoundError:
            return {}
        if data.get("version") != self.VERSION:
            raise ValueError(f"{self.file}: checkpoint version {data.get('version')} is not {self.VERSION}")
        return {k: FileCheckpoint(**v) for k, v in data.get("files", {}).items()}

    def save(self, files: dict[str, FileCheckpoint]) -> None:
        tmp = self.file.with_name(f".{self.file.name}.tmp")
        body = orjson.dumps({"version": self.VERSION, "files": {k: asdict(v) for k, v in files.items()}})
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)
        fd = os.open(self.file.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
