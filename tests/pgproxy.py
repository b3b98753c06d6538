"""A TCP proxy in front of PostgreSQL that loses the answer to one COMMIT: an ambiguous commit.

When a transaction whose statements contain `marker` sends COMMIT, the proxy forwards it, reads
the server's answer (so the commit has happened), and cuts the connection instead of passing
that answer on, as a network cut at that instant would. With `then_cut`, the next client
message after that holding `then_cut` is not forwarded either: the connection is cut before it
(once), so the retry of the lost COMMIT fails half-way too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"
COMMITTED = b"C\x00\x00\x00\x0bCOMMIT\x00"  # CommandComplete for COMMIT


class Proxy:
    """Listens on loopback; forwards to PostgreSQL's host (or socket folder) and port."""

    def __init__(self, host: str, port: int, marker: bytes) -> None:
        self.host, self.port, self.marker = host, port, marker
        self.armed = False
        self.dropped = 0
        self.then_cut: bytes | None = None
        self.cut = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.listen_port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.host.startswith("/"):
            return await asyncio.open_unix_connection(f"{self.host}/.s.PGSQL.{self.port}")
        return await asyncio.open_connection(self.host, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._upstream()
        seen = bytearray()

        async def down() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        relay = asyncio.ensure_future(down())
        try:
            while data := await reader.read(65536):
                seen.extend(data)
                if self.dropped and not self.cut and self.then_cut and self.then_cut in data:
                    self.cut += 1
                    break
                if self.armed and COMMIT in data and self.marker in seen:
                    self.armed = False
                    relay.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await relay  # its pending read ends before this one starts
                    up_writer.write(data)
                    await up_writer.drain()
                    answer = bytearray()
                    while COMMITTED not in answer and (more := await up_reader.read(65536)):
                        answer.extend(more)
                    self.dropped += 1
                    break
                if COMMIT in data:
                    seen.clear()
                up_writer.write(data)
                await up_writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            relay.cancel()
            writer.close()
            up_writer.close()
