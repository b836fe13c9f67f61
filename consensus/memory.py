"""An in-memory consensus backend with the node's interface, for fast deterministic tests.

A :class:`MemoryCluster` holds one log shared by its replicas. A test decides who leads (``elect``), and entries
are applied to every connected replica as soon as they are proposed, or held back for a disconnected one until it
reconnects. There are no threads and no clocks: the test drives everything.
"""

from __future__ import annotations

import threading

from consensus.apply import Machine
from consensus.backend import ProposeCallback


class MemoryCluster:
    def __init__(self, addresses: list[str]) -> None:
        self.log: list[bytes] = []
        self.current_term = 0
        self.leader: str | None = None
        self.replicas = {a: MemoryReplica(self, a) for a in addresses}

    def elect(self, address: str) -> int:
        self.current_term += 1
        self.leader = address
        return self.current_term

    def append(self, data: bytes) -> int:
        self.log.append(data)
        for r in self.replicas.values():
            if r.connected:
                r.catch_up()
        return len(self.log)


class MemoryReplica:
    def __init__(self, cluster: MemoryCluster, address: str) -> None:
        self.cluster = cluster
        self.address = address
        self.machine = Machine()
        self.lock = threading.RLock()
        self.connected = True
        self.applied_log = 0
        self._waiting: dict[int, ProposeCallback] = {}

    def catch_up(self) -> None:
        with self.lock:
            while self.applied_log < len(self.cluster.log):
                self.applied_log += 1
                result = self.machine.apply(self.cluster.log[self.applied_log - 1])
                cb = self._waiting.pop(self.applied_log, None)
                if cb is not None:
                    cb(result, None)

    def propose(self, data: bytes, callback: ProposeCallback) -> None:
        if not self.connected or self.cluster.leader is None:
            callback(None, "no_leader")
            return
        self._waiting[len(self.cluster.log) + 1] = callback
        self.cluster.append(data)

    def is_leader(self) -> bool:
        return self.connected and self.cluster.leader == self.address

    def leader_address(self) -> str | None:
        return self.cluster.leader if self.connected else None

    def term(self) -> int:
        return self.cluster.current_term

    def has_quorum(self) -> bool:
        return self.connected

    def raft_status(self) -> dict[str, object]:
        return {"log_len": len(self.cluster.log), "applied": self.applied_log}

    def start(self) -> None:
        self.catch_up()

    def stop(self) -> None:
        self.connected = False
