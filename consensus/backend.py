"""What the node needs from a consensus backend; implemented by :mod:`consensus.raft` and
:mod:`consensus.memory`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from consensus.apply import Machine, Result

# callback(result, error): exactly one of them is None. error is a short code such as "not_leader".
ProposeCallback = Callable[[Result | None, str | None], None]


class Backend(Protocol):
    machine: Machine
    # Held while an entry is applied; readers on other threads take it to see a consistent state.
    lock: threading.RLock

    def propose(self, data: bytes, callback: ProposeCallback) -> None: ...

    def is_leader(self) -> bool: ...

    def leader_address(self) -> str | None: ...

    def term(self) -> int: ...

    def has_quorum(self) -> bool: ...

    def raft_status(self) -> dict[str, object]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...
