"""A TCP proxy per directed peer link whose two directions can be stalled and resumed.

A stalled direction stops forwarding: the proxy holds the chunk it has and stops reading, so the kernel
buffers and then the sender's writes back up; no byte is dropped from an established stream and order is
kept. On resume everything flows again, end-of-stream included. A connection accepted while its forward
direction is stalled is not connected upstream until the direction resumes (like a SYN that never
arrived); if the dialer gives up first, it is dropped without ever reaching the server.

The engine runs its own event loop in a thread, so the harness's loop can block without delaying traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import pickle
import struct
import threading
import zlib
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

Direction = tuple[str, str]
PICKLE_PROTOCOL = 2  # pysyncobj's


def rewrite_announce(buf: bytes, old: str, new: str) -> tuple[bytes, bool]:
    """Rewrite pysyncobj's first frame (``int32 length`` + zlib(pickle(address))) from ``old`` to ``new``.

    Returns (bytes to forward, complete). Incomplete frames return ``(b"", False)``; a first frame that is
    not exactly ``old`` (encrypted, ``readonly``, another protocol) is forwarded untouched.
    """
    if len(buf) < 4:
        return b"", False
    (length,) = struct.unpack("i", buf[:4])
    if length < 0 or length > 1 << 20:
        return buf, True
    if len(buf) < 4 + length:
        return b"", False
    payload, rest = buf[4 : 4 + length], buf[4 + length :]
    try:
        plain = zlib.decompress(payload)
    except zlib.error:
        return buf, True
    if plain != pickle.dumps(old, PICKLE_PROTOCOL):
        return buf, True
    out = zlib.compress(pickle.dumps(new, PICKLE_PROTOCOL), 3)
    return struct.pack("i", len(out)) + out + rest, True


@dataclass
class Link:
    src: str
    dst: str
    listen: tuple[str, int]
    target: tuple[str, int]
    announce: tuple[str, str] | None = None
    server: asyncio.base_events.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    connections: int = 0


class ProxyEngine:
    def __init__(self) -> None:
        self.links: list[Link] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._flow: dict[Direction, asyncio.Event] = {}
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.cuts: frozenset[Direction] = frozenset()

    def add_link(
        self,
        src: str,
        dst: str,
        listen: tuple[str, int],
        target: tuple[str, int],
        announce: tuple[str, str] | None = None,
    ) -> None:
        self.links.append(Link(src, dst, listen, target, announce))

    # ------------------------------------------------------------------ thread side

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._main, name="chaos-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("proxy did not start in time")
        if self._error is not None:
            raise RuntimeError(f"proxy failed to start: {self._error}")

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # surfaced to start()
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        try:
            for link in self.links:
                for d in ((link.src, link.dst), (link.dst, link.src)):
                    if d not in self._flow:
                        ev = asyncio.Event()
                        ev.set()
                        self._flow[d] = ev
                link.server = await asyncio.start_server(
                    functools.partial(self._accept, link), link.listen[0], link.listen[1]
                )
        except BaseException as e:
            self._error = e
            self._ready.set()
            raise
        self._ready.set()
        await self._stopped.wait()
        for link in self.links:
            if link.server is not None:
                link.server.close()
            for t in list(link.tasks):
                t.cancel()
        for link in self.links:
            if link.tasks:
                await asyncio.gather(*link.tasks, return_exceptions=True)
        for link in self.links:
            if link.server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(link.server.wait_closed(), 2.0)
        await asyncio.sleep(0.05)  # let closed transports deliver connection_lost before the loop closes

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop is not None and self._stopped is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def set_cuts(self, cuts: Iterable[Direction], timeout: float = 5.0) -> None:
        """Stall exactly the given directions (every other direction flows). Thread-safe."""
        new = frozenset(cuts)
        assert self.loop is not None
        done = threading.Event()

        def apply() -> None:
            for d, ev in self._flow.items():
                if d in new:
                    ev.clear()
                else:
                    ev.set()
            done.set()

        self.loop.call_soon_threadsafe(apply)
        if not done.wait(timeout):
            raise RuntimeError("proxy did not apply the cuts in time")
        self.cuts = new

    # ------------------------------------------------------------------ loop side

    def _spawn(self, link: Link, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        link.tasks.add(task)
        task.add_done_callback(link.tasks.discard)

    def _accept(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link.connections += 1
        self._spawn(link, self._handle(link, reader, writer))

    async def _handle(self, link: Link, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        fwd, back = (link.src, link.dst), (link.dst, link.src)
        try:
            if not self._flow[fwd].is_set():
                gone = asyncio.ensure_future(self._dialer_closed(creader))
                flow = asyncio.ensure_future(self._flow[fwd].wait())
                await asyncio.wait({gone, flow}, return_when=asyncio.FIRST_COMPLETED)
                closed = gone.done()
                for t in (gone, flow):
                    t.cancel()
                if closed:
                    return  # the dialer gave up before the link came back: it never reached the server
            try:
                ureader, uwriter = await asyncio.wait_for(asyncio.open_connection(*link.target), 5.0)
            except (OSError, TimeoutError):
                return
            try:
                await asyncio.gather(
                    self._pump(creader, uwriter, fwd, link.announce),
                    self._pump(ureader, cwriter, back, None),
                )
            finally:
                uwriter.close()
        except (ConnectionError, OSError):
            pass
        finally:
            cwriter.close()

    async def _dialer_closed(self, reader: asyncio.StreamReader) -> None:
        """Returns once the dialer has closed its side (data it sent stays unread in the buffer)."""
        while not getattr(reader, "_eof", False):
            await asyncio.sleep(0.05)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
        announce: tuple[str, str] | None,
    ) -> None:
        flow = self._flow[direction]
        head = announce is not None
        buf = b""
        try:
            while True:
                data = await reader.read(65536)
                if head:
                    assert announce is not None
                    buf += data
                    out, complete = rewrite_announce(buf, announce[0], announce[1])
                    if not complete and data:
                        continue
                    data, head = (out if complete else buf), False
                if data:
                    await flow.wait()
                    writer.write(data)
                    await writer.drain()
                if reader.at_eof():
                    break
            await flow.wait()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()
