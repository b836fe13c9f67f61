"""The one place where the consensus thread meets asyncio.

pysyncobj applies entries and fires callbacks on its own thread. Here, and only here, those events cross into the
event loop (``call_soon_threadsafe``), and readers on the loop take the backend's lock to see a consistent state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from consensus.apply import Result
from consensus.backend import Backend
from consensus.codec import encode
from consensus.commands import Command
from consensus.state import State

T = TypeVar("T")


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
        """Propose and wait for the entry to be applied on this node. Raises :class:`NotCommitted`."""
        fut: asyncio.Future[Result] = self.loop.create_future()

        def resolve(result: Result | None, error: str | None) -> None:
            if fut.done():
                return
            if result is not None:
                fut.set_result(result)
            else:
                fut.set_exception(NotCommitted(error or "failed", f"not committed: {error}"))

        def callback(result: Result | None, error: str | None) -> None:
            self.loop.call_soon_threadsafe(resolve, result, error)

        self.backend.propose(encode(cmd), callback)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise NotCommitted("timeout", f"no commit within {timeout:.1f}s; it may still apply") from None

    # ---------------------------------------------------------------- reads

    def read(self, fn: Callable[[State], T]) -> T:
        with self.backend.lock:
            return fn(self.backend.machine.state)

    def digest_and_index(self) -> tuple[str, int]:
        with self.backend.lock:
            st = self.backend.machine.state
            return st.digest(), st.applied
