"""Simulated agents for benchmarks: many agents in one node process that never run a process.

Each simulated agent registers through the log (``RegisterAgent``), heartbeats, and reports the attempts the log
assigns to it: ``RUNNING`` as soon as it sees the committed launch, ``FINISHED`` (exit 0) ``simulated_task_s``
later. Reports are batched hard: at most one ``StatusUpdate`` entry per agent is in flight, and everything that
piles up meanwhile goes into the next one, so the entry rate adapts to the commit latency.

New launches are found by reading the tail of ``State.attempts`` (insertion ordered, append only) since the last
look, so finding work costs O(new attempts), not O(live attempts). A slower sweep over the agents' live attempts
catches anything else (a restored snapshot, an attempt the cluster wants killed).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field

from consensus.commands import Heartbeat, StatusUpdate
from consensus.state import State, TaskState
from node.agent.service import propose_until_committed, register_command
from node.bridge import Bridge, NotCommitted
from node.config import AgentConfig, Timing
from node.leader.loop import now_ms

log = logging.getLogger("conclave.simulated")

FLUSH_INTERVAL_S = 0.002  # shortest gap between two flushes
SWEEP_INTERVAL_S = 1.0
MAX_UPDATES_PER_ENTRY = 5000
MAX_IN_FLIGHT = 2000  # proposals outstanding from this process
REGISTER_CONCURRENCY = 200


@dataclass
class SimStats:
    registered: int = 0
    launches_seen: int = 0
    updates_sent: int = 0
    entries_sent: int = 0
    heartbeats_sent: int = 0
    not_committed: int = 0


@dataclass
class SimulatedAgents:
    bridge: Bridge
    node_id: str
    config: AgentConfig
    timing: Timing
    incarnation: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    stats: SimStats = field(default_factory=SimStats)
    ids: list[str] = field(init=False)
    _mine: frozenset[str] = field(init=False)
    _registered: set[str] = field(default_factory=set)
    _pending: dict[str, list[list[object]]] = field(default_factory=dict)
    _in_flight: set[str] = field(default_factory=set)
    _handled: set[str] = field(default_factory=set)  # attempts reported or being reported, until terminal
    _finishing: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic due, agent, attempt)
    _last_contact: dict[str, float] = field(default_factory=dict)  # agent -> monotonic time of last commit
    _cursor: int = 0
    _state_id: int = 0
    _stopping: bool = False
    _sweep_now: bool = False
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.ids = [f"{self.node_id}-sim{i:05d}" for i in range(self.config.simulated)]
        self._mine = frozenset(self.ids)

    def stop(self) -> None:
        self._stopping = True

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        await self._register_all()
        hb = asyncio.create_task(self._heartbeat_loop())
        try:
            generation = self.bridge.generation
            last_sweep = time.monotonic()
            while not self._stopping:
                generation = await self.bridge.wait_changed(generation, 0.05)
                mono = time.monotonic()
                sweep = mono - last_sweep >= SWEEP_INTERVAL_S
                if sweep:
                    last_sweep = mono
                self._sweep_now = sweep
                self.bridge.read(self._scan)
                self._finish_due(mono)
                self._flush()
                await asyncio.sleep(FLUSH_INTERVAL_S)
        finally:
            hb.cancel()
            for t in list(self._tasks):
                t.cancel()

    async def _register_all(self) -> None:
        sem = asyncio.Semaphore(REGISTER_CONCURRENCY)
        cfg = self.config

        async def register(agent_id: str) -> None:
            async with sem:
                result = await propose_until_committed(
                    self.bridge,
                    lambda: register_command(agent_id, self.incarnation, cfg),
                    self.timing,
                    lambda: self._stopping,
                )
                if result is not None:
                    if not result.ok:
                        log.error("simulated agent %s refused: %s", agent_id, result.message)
                        return
                    self._registered.add(agent_id)
                    self._last_contact[agent_id] = time.monotonic()
                    self.stats.registered += 1

        await asyncio.gather(*(register(a) for a in self.ids))
        log.info("%d simulated agent(s) registered on %s", len(self._registered), self.node_id)

    # ------------------------------------------------------------------ finding work

    def _scan(self, st: State) -> None:
        mine = self._mine
        sweep = self._sweep_now
        if id(st) != self._state_id:  # a restored snapshot replaces the state object
            self._state_id = id(st)
            self._cursor = 0
            sweep = True
        total = len(st.attempts)
        new = total - self._cursor
        if new > 0:
            found: list[tuple[str, str]] = []
            for att in itertools.islice(reversed(st.attempts.values()), new):
                if att.agent_id in mine and att.state == TaskState.STAGING and att.kill_reason is None:
                    found.append((att.agent_id, att.id))
            self._cursor = total
            for agent_id, att_id in reversed(found):
                self._launched(st, agent_id, att_id)
        if sweep:
            for agent_id in self._registered:
                agent = st.agents.get(agent_id)
                if agent is None or agent.incarnation != self.incarnation:
                    continue
                for att_id in agent.attempts:
                    att = st.attempts[att_id]
                    if att.kill_reason is not None and att_id not in self._handled:
                        self._handled.add(att_id)
                        self._queue(agent_id, [att_id, "KILLED", None, f"killed: {att.kill_reason}"])
                    elif att_id not in self._handled:
                        self._launched(st, agent_id, att_id)

    def _launched(self, st: State, agent_id: str, att_id: str) -> None:
        if att_id in self._handled or agent_id not in self._registered:
            return
        agent = st.agents.get(agent_id)
        if agent is None or agent.incarnation != self.incarnation:
            return
        self._handled.add(att_id)
        self.stats.launches_seen += 1
        task_s = self.config.simulated_task_s
        if task_s <= 0:
            self._queue(agent_id, [att_id, "RUNNING", None, ""], [att_id, "FINISHED", 0, ""])
        else:
            self._queue(agent_id, [att_id, "RUNNING", None, ""])
            heapq.heappush(self._finishing, (time.monotonic() + task_s, agent_id, att_id))

    def _finish_due(self, mono: float) -> None:
        while self._finishing and self._finishing[0][0] <= mono:
            _, agent_id, att_id = heapq.heappop(self._finishing)
            self._queue(agent_id, [att_id, "FINISHED", 0, ""])

    def _queue(self, agent_id: str, *updates: list[object]) -> None:
        self._pending.setdefault(agent_id, []).extend(updates)

    # ------------------------------------------------------------------ reporting

    def _flush(self) -> None:
        for agent_id in list(self._pending):
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                return
            if agent_id in self._in_flight:
                continue
            updates = self._pending.pop(agent_id)
            batch, rest = updates[:MAX_UPDATES_PER_ENTRY], updates[MAX_UPDATES_PER_ENTRY:]
            if rest:
                self._pending[agent_id] = rest
            self._in_flight.add(agent_id)
            self._spawn(self._send(agent_id, batch))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, agent_id: str, batch: list[list[object]]) -> None:
        try:
            result = await self.bridge.propose(
                StatusUpdate(agent_id, self.incarnation, now_ms(), batch), self.timing.request_timeout_s
            )
        except NotCommitted:
            self.stats.not_committed += 1
            self._pending[agent_id] = batch + self._pending.get(agent_id, [])
            return
        finally:
            self._in_flight.discard(agent_id)
        self.stats.entries_sent += 1
        self.stats.updates_sent += len(batch)
        self._last_contact[agent_id] = time.monotonic()
        for u in batch:
            if u[1] in ("FINISHED", "FAILED", "KILLED", "LOST"):
                self._handled.discard(str(u[0]))
        if not result.ok:
            log.warning("simulated status update for %s refused: %s", agent_id, result.message)

    async def _heartbeat_loop(self) -> None:
        period = self.config.simulated_heartbeat_s
        tick = 0.1
        slices = max(1, round(period / tick))
        ordered = list(self.ids)
        for n in itertools.count():
            if self._stopping:
                return
            await asyncio.sleep(tick)
            mono = time.monotonic()
            for agent_id in ordered[n % slices :: slices]:
                if agent_id not in self._registered or agent_id in self._in_flight:
                    continue
                if mono - self._last_contact.get(agent_id, 0.0) < period * 0.5:
                    continue  # a status update committed recently counts as a heartbeat
                if len(self._in_flight) >= MAX_IN_FLIGHT:
                    break
                self._in_flight.add(agent_id)
                self._spawn(self._beat(agent_id))

    async def _beat(self, agent_id: str) -> None:
        try:
            result = await self.bridge.propose(
                Heartbeat(agent_id, self.incarnation, now_ms()), self.timing.agent_lease_s
            )
        except NotCommitted:
            self.stats.not_committed += 1
            return
        finally:
            self._in_flight.discard(agent_id)
        self.stats.heartbeats_sent += 1
        if result.ok:
            self._last_contact[agent_id] = time.monotonic()
        elif result.code == "stale_incarnation":
            self._registered.discard(agent_id)
