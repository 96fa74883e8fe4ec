"""Elasticsearch's bulk API (``/_bulk``, ``/{index}/_bulk``) and the little else its clients ask first.

``index`` and ``create`` actions are taken: each document, a JSON object, is one record as it was
sent (ingest's JSON parser maps ``@timestamp``, ``message``, ``log.level``, ``host.name``,
``service.name``... to columns), its index the record's source. ``update`` and ``delete`` are
answered per item with status 400, as is a document that is not a JSON object; the other items are
stored. The answer has Elasticsearch's shape (``took``, ``errors``, ``items`` with a status each), and
every response carries ``X-Elastic-Product: Elasticsearch``, which the official clients check.
"""

from __future__ import annotations

from typing import Any

import orjson

from receive.errors import BadRequest
from receive.records import Run

#: What the official clients and agents check before they send: a version they support.
ES_VERSION = "8.11.0"
PRODUCT_HEADER = ("X-Elastic-Product", "Elasticsearch")
_ACTIONS = ("index", "create", "update", "delete")


def info() -> dict[str, Any]:
    """The answer to ``GET /``."""
    return {"name": "loglake", "cluster_name": "loglake", "cluster_uuid": "loglake",
            "version": {"number": ES_VERSION, "build_flavor": "default", "build_type": "loglake",
                        "lucene_version": "9.8.0", "minimum_wire_compatibility_version": "7.17.0",
                        "minimum_index_compatibility_version": "7.0.0"},
            "tagline": "You Know, for Search"}


def _error(kind: str, reason: str) -> dict[str, Any]:
    return {"type": kind, "reason": reason}


class Bulk:
    """A parsed bulk request: runs (one per index) and the answer's items, in request order."""

    def __init__(self, body: bytes, path_index: str | None, id_prefix: str) -> None:
        self.runs: dict[str, Run] = {}
        self.items: list[dict[str, Any]] = []
        self.records = 0
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in body.split(b"\n")]
        i = 0
        while i < len(lines):
            raw = lines[i]
            i += 1
            if not raw.strip():
                continue
            action, meta = self._action(raw, i)
            index = meta.get("_index", path_index)
            doc_id = meta.get("_id")
            doc: bytes | None = None
            if action != "delete":
                if i >= len(lines):
                    raise BadRequest(f"line {i}: the {action} action has no document line after it")
                doc = lines[i].strip()
                i += 1
            number = len(self.items)
            item: dict[str, Any] = {"_index": index, "_id": doc_id if isinstance(doc_id, str) and doc_id
                                    else f"{id_prefix}-{number}"}
            if action in ("update", "delete"):
                item.update(status=400, error=_error("action_request_validation_exception",
                                                     f"{action} is not supported: loglake only appends"))
            elif not isinstance(index, str) or not index:
                item.update(status=400, error=_error("action_request_validation_exception",
                                                     "index is missing (in the action or the path)"))
            elif not self._is_object(doc):
                item.update(status=400, error=_error("mapper_parsing_exception",
                                                     f"line {i}: the document is not a JSON object"))
            else:
                assert doc is not None
                run = self.runs.setdefault(index, Run(service="unknown", host="", source=index))
                run.lines.append(doc)
                self.records += 1
                item.update(_version=1, result="created", status=201, _seq_no=number, _primary_term=1,
                            _shards={"total": 1, "successful": 1, "failed": 0})
            self.items.append({action: item})

    @staticmethod
    def _action(raw: bytes, line: int) -> tuple[str, dict[str, Any]]:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"line {line}: the action is not JSON: {e}") from None
        if not isinstance(obj, dict) or len(obj) != 1:
            raise BadRequest(f"line {line}: an action is an object with one key, one of {', '.join(_ACTIONS)}")
        (action, meta), = obj.items()
        if action not in _ACTIONS:
            raise BadRequest(f"line {line}: unknown action {action[:40]!r} (one of {', '.join(_ACTIONS)})")
        if not isinstance(meta, dict):
            raise BadRequest(f"line {line}: the {action} action's metadata must be an object")
        for key in ("_index", "_id"):
            if key in meta and not isinstance(meta[key], str):
                raise BadRequest(f"line {line}: {key} must be text")
        return action, meta

    @staticmethod
    def _is_object(doc: bytes | None) -> bool:
        if not doc or not doc.startswith(b"{"):
            return False
        try:
            return isinstance(orjson.loads(doc), dict)
        except orjson.JSONDecodeError:
            return False

    def answer(self, took_ms: int) -> dict[str, Any]:
        return {"took": took_ms, "errors": any(next(iter(it.values()))["status"] >= 300 for it in self.items),
                "items": self.items}
