"""``/api/v1/ingest``: newline-delimited JSON objects, each one record as it was sent.

The route's ``service``, ``host`` and ``source`` parameters describe the records that do not say
themselves (a record's own ``service`` or ``host`` wins, as for any JSON line). A line that is not a
JSON object fails the whole request (400, naming the line), so a request is stored whole or not at all.
"""

from __future__ import annotations

import orjson

from receive.errors import BadRequest
from receive.records import Run


def decode(body: bytes, service: str, host: str, source: str) -> tuple[list[Run], int]:
    run = Run(service=service, host=host, source=source)
    for n, line in enumerate(body.split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            ok = line.startswith(b"{") and isinstance(orjson.loads(line), dict)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"line {n} is not JSON: {e}") from None
        if not ok:
            raise BadRequest(f"line {n} is not a JSON object")
        run.lines.append(line)
    return ([run] if run.lines else []), len(run.lines)
