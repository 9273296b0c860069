"""A lean HTTP/1.1 client for load generators: one keep-alive connection, one request at a
time, JSON in and out.

    async with LeanConnection("127.0.0.1", 8000, {"Authorization": "Bearer ..."}) as http:
        status, body = await http.request("POST", "/v1/transfers", {"amount": "1.00"},
                                          {"Idempotency-Key": key})

The benchmarks run their clients on the machine they measure, so the clients' CPU is taken
from the system under test. httpx spent about 8 ms of CPU per transfer (a POST and a
`?wait` GET) on this 2-core VM, a sixth of the whole machine's work per transfer; this
client writes each request with one `write` and reads the answer by its Content-Length, for
a fraction of that (docs/benchmark-clients.md). It understands only what the ledger's
server sends: a status line, headers with a Content-Length, and a body (decoded when its
content type is JSON); anything else (chunked encoding, a body without a length, a broken
connection) raises `ProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Final, Self

import orjson

_HEADER_END: Final = b"\r\n\r\n"
_MAX_HEADER_BYTES: Final = 64 * 1024
DEFAULT_TIMEOUT_S: Final = 60.0
"""How long `request` waits for a whole answer by default."""


class ProtocolError(Exception):
    """The server's answer is not one this client understands, or the connection broke."""


class LeanConnection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None) -> None:
        self._host = host
        self._port = port
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection, if open."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(
        self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None,
        *, timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> tuple[int, Any]:
        """Send one request; the answer's status and its body: decoded JSON when it says it
        is JSON, else its text (None when empty).

        A connection found closed (by the server, while idle) is opened again first; a
        request already sent is never sent again. An answer not complete within `timeout_s`
        raises TimeoutError, one this client does not understand ProtocolError; either way,
        and on cancellation, the connection is closed, so that no later request can read
        this one's answer.
        """
        if self._writer is None or self._writer.is_closing() or self._is_closed_by_server():
            await self._connect()
        assert self._reader is not None
        assert self._writer is not None
        try:
            async with asyncio.timeout(timeout_s):
                self._writer.write(self._encode(method, path, json, headers))
                await self._writer.drain()
                status, is_json, body, keep_alive = await self._answer(self._reader)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError) as e:
            await self.close()
            raise ProtocolError(f"{method} {path}: no complete answer ({e!r})") from e
        except BaseException:
            await self.close()
            raise
        if not keep_alive:
            await self.close()
        if not body:
            return status, None
        return status, orjson.loads(body) if is_json else body.decode(errors="replace")

    def _is_closed_by_server(self) -> bool:
        return self._reader is not None and self._reader.at_eof()

    async def _connect(self) -> None:
        await self.close()
        self._reader, self._writer = await asyncio.open_connection(
            self._host, self._port, limit=_MAX_HEADER_BYTES
        )

    def _encode(
        self, method: str, path: str, json: Any, headers: dict[str, str] | None
    ) -> bytes:
        body = b"" if json is None else orjson.dumps(json)
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        content = "content-type: application/json\r\n" if json is not None else ""
        head = (f"{method} {path} HTTP/1.1\r\nhost: {self._host}:{self._port}\r\n{self._fixed}"
                f"{extra}{content}content-length: {len(body)}\r\n\r\n")  # fmt: skip
        return head.encode("latin-1") + body

    @staticmethod
    async def _answer(reader: asyncio.StreamReader) -> tuple[int, bool, bytes, bool]:
        """Status, whether the body is JSON, the body, whether the connection stays open."""
        head = await reader.readuntil(_HEADER_END)
        lines = head[: -len(_HEADER_END)].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x status line: {lines[0]!r}")
        length: int | None = None
        is_json = False
        keep_alive = parts[0] == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                if not value.isdigit():
                    raise ProtocolError(f"not a content-length: {value!r}")
                length = int(value)
            elif name == "content-type":
                is_json = value.split(";")[0].strip().lower().endswith("json")
            elif name == "transfer-encoding":
                raise ProtocolError(f"transfer-encoding {value} is not supported")
            elif name == "connection":
                keep_alive = value.lower() == "keep-alive"
        if length is None:
            raise ProtocolError("an answer without a content-length is not supported")
        return int(parts[1]), is_json, await reader.readexactly(length), keep_alive
