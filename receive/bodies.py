"""Reading a request body within a size limit, and undoing its compression within the same limit.

The limit holds for the bytes sent and for the bytes they decompress to, so neither a large body
nor a small one that inflates (a gzip or snappy bomb) is ever held whole.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import cramjam

from receive.errors import BadRequest, TooLarge, UnsupportedMediaType


async def read_limited(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if size > limit:
            raise TooLarge(f"request body of {size} bytes is over the limit of {limit} bytes "
                           "(receive.max_request_bytes); send smaller batches")
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes (receive.max_request_bytes); "
                           "send smaller batches")
        parts.append(chunk)
    return b"".join(parts)


def _inflate(body: bytes, wbits: int, limit: int, name: str) -> bytes:
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"body is not valid {name}: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise TooLarge(f"body inflates to over the limit of {limit} bytes (receive.max_request_bytes)")
    if not d.eof:
        raise BadRequest(f"body is not valid {name}: it ends early")
    return out


def _snappy_length(body: bytes) -> int:
    """The uncompressed length a snappy block declares (a varint at its start)."""
    n = shift = 0
    for i, b in enumerate(body[:10]):
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n
        shift += 7
        if i == 9:
            break
    raise BadRequest("body is not snappy-compressed (block format): no length at its start")


def snappy_block(body: bytes, limit: int) -> bytes:
    if _snappy_length(body) > limit:
        raise TooLarge(f"body inflates to over the limit of {limit} bytes (receive.max_request_bytes)")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as e:     # cramjam's DecompressionError is not exported as a type
        raise BadRequest(f"body is not snappy-compressed (block format): {e}") from None


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` without its Content-Encoding."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, limit, "gzip")
    if enc == "deflate":
        return _inflate(body, zlib.MAX_WBITS, limit, "deflate (zlib)")
    if enc == "snappy":
        return snappy_block(body, limit)
    raise UnsupportedMediaType(f"Content-Encoding {encoding[:40]!r} is not supported (gzip, deflate, snappy, none)")
