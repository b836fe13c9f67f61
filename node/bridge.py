"""The one place where the consensus thread meets asyncio.

pysyncobj applies entries and fires callbacks on its own thread. Here, and only here, those events cross into the
event loop (``call_soon_threadsafe``), and readers on the loop take the backend's lock to see a consistent state.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from consensus.apply import Result
from consensus.backend import Backend
from consensus.codec import encode
from consensus.commands import Batch, Command
from consensus.state import State

T = TypeVar("T")

MAX_IN_FLIGHT = 4  # uncommitted entries one node keeps in the pipeline before it starts grouping proposals
MAX_BATCH = 2000  # commands per Batch entry
MAX_BATCH_BYTES = 2 * 1024 * 1024  # well under pysyncobj's 4 MiB chunking threshold


class NotCommitted(Exception):
    """The proposal did not commit, or we could not learn that it did. It may still commit later."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Bridge:
    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop) -> None:
        self.backend = backend
        self.loop = loop
        self.generation = 0  # bumped on the loop each time new entries were applied
        self.last_apply_monotonic = time.monotonic()
        self._changed = asyncio.Event()
        self._notify_pending = False
        self._pending: deque[tuple[bytes, asyncio.Future[Result]]] = deque()
        self._flush_scheduled = False
        self._in_flight = 0
        self.batches = 0  # entries proposed
        self.batched_commands = 0  # commands they carried
        self._digest_cache: tuple[int, str] = (-1, "")
        backend.machine.on_applied = self._on_applied_thread

    # ---------------------------------------------------------------- consensus thread -> loop

    def _on_applied_thread(self, _cmd: object, _result: Result) -> None:
        if not self._notify_pending:
            self._notify_pending = True
            self.loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        self._notify_pending = False
        self.generation += 1
        self.last_apply_monotonic = time.monotonic()
        self._changed.set()

    async def wait_changed(self, seen_generation: int, timeout: float) -> int:
        """Return once the generation moved past ``seen_generation`` or ``timeout`` elapsed."""
        if self.generation == seen_generation:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass
        return self.generation

    # ---------------------------------------------------------------- proposals

    async def propose(self, cmd: Command, timeout: float) -> Result:
        """Propose and wait for the entry to be applied on this node. Raises :class:`NotCommitted`.

        Group commit: proposals made while ``MAX_IN_FLIGHT`` entries of this node are still uncommitted (or in the
        same loop iteration) travel together as one ``Batch`` entry; each caller gets its own command's result.
        """
        fut: asyncio.Future[Result] = self.loop.create_future()
        data = encode(cmd)
        self._pending.append((data, fut))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        try:
            return await asyncio.wait_for(fut, timeout)  # on timeout fut is cancelled: _resolve skips it
        except TimeoutError:
            raise NotCommitted("timeout", f"no commit within {timeout:.1f}s; it may still apply") from None

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            batch: list[tuple[bytes, asyncio.Future[Result]]] = []
            size = 0
            while (
                self._pending
                and len(batch) < MAX_BATCH
                and (not batch or size + len(self._pending[0][0]) <= MAX_BATCH_BYTES)
            ):
                item = self._pending.popleft()
                size += len(item[0])
                batch.append(item)
            data = batch[0][0] if len(batch) == 1 else encode(Batch([d for d, _ in batch]))
            self._in_flight += 1
            self.batches += 1
            self.batched_commands += len(batch)

            def callback(
                result: Result | None, error: str | None, batch: list[tuple[bytes, asyncio.Future[Result]]] = batch
            ) -> None:
                self.loop.call_soon_threadsafe(self._resolve, batch, result, error)

            self.backend.propose(data, callback)

    def _resolve(
        self, batch: list[tuple[bytes, asyncio.Future[Result]]], result: Result | None, error: str | None
    ) -> None:
        self._in_flight -= 1
        for i, (_, fut) in enumerate(batch):
            if fut.done():
                continue
            if result is None:
                fut.set_exception(NotCommitted(error or "failed", f"not committed: {error}"))
            elif len(batch) == 1 or not isinstance(result.value, list):
                fut.set_result(result)
            else:
                fut.set_result(result.value[i])
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    # ---------------------------------------------------------------- reads

    def read(self, fn: Callable[[State], T]) -> T:
        with self.backend.lock:
            return fn(self.backend.machine.state)

    def digest_and_index(self) -> tuple[str, int]:
        """The state digest at the current applied index. O(state) under the apply lock, so it is cached per
        index; pollers that only need liveness should ask ``/v1/status?digest=0``."""
        with self.backend.lock:
            st = self.backend.machine.state
            if self._digest_cache[0] != st.applied:
                self._digest_cache = (st.applied, st.digest())
            return self._digest_cache[1], st.applied
