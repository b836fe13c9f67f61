"""What only the leader does: the term barrier, allocation rounds, offer expiry, agent liveness, drain deadlines.

All of it is advisory until committed. The loop acts only after its own ``LeaderElected`` entry for the current
term has been applied, and every decision it commits carries that term, so ``apply`` refuses anything a deposed
leader proposes once a successor's barrier is in the log.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from consensus.apply import WORKFLOW_FRAMEWORK
from consensus.commands import AgentLost, KillAttempts, Launch, LeaderElected, PurgeJobs
from consensus.spec import Resources
from consensus.state import JOB_TERMINAL, AgentState, State
from node.bridge import Bridge, NotCommitted
from node.config import Timing
from node.leader.allocator import Allocator, Offer
from node.leader.workflow import place

log = logging.getLogger("conclave.leader")

PURGE_EVERY_S = 5.0
PURGE_BATCH = 5000
REMOVAL_WINDOW_S = 60.0
REMOVAL_FRACTION = 0.34  # at most this share of agents (at least one) declared lost per window


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class LeaderStats:
    terms_led: int = 0
    rounds: int = 0
    launches_committed: int = 0
    launches_refused: int = 0
    agents_lost: int = 0
    first_launch_at: float | None = None  # monotonic time of the first launch committed in the current term


@dataclass
class LeaderLoop:
    bridge: Bridge
    node_id: str
    timing: Timing
    unsafe_no_fencing: bool = False
    allocator: Allocator = field(init=False)
    term: int = 0  # term we are acting in (0 = not acting)
    active_since: float = 0.0
    seen: dict[str, tuple[int, float]] = field(default_factory=dict)  # agent -> (heartbeats, monotonic)
    removals: deque[float] = field(default_factory=deque)
    stats: LeaderStats = field(default_factory=LeaderStats)
    revive_needed: bool = True
    _last_generation: int = -1
    _last_purge: float = 0.0
    _stopping: bool = False

    def __post_init__(self) -> None:
        self.allocator = Allocator(self.timing.offer_timeout_s)

    @property
    def agent_timeout_s(self) -> float:
        return 1.0 if self.unsafe_no_fencing else self.timing.agent_timeout_s

    @property
    def grace_s(self) -> float:
        return 0.0 if self.unsafe_no_fencing else self.timing.leader_grace_s

    def stop(self) -> None:
        self._stopping = True

    def is_acting(self) -> bool:
        return self.term != 0

    def offers(self) -> list[Offer]:
        return list(self.allocator.offers.values()) if self.is_acting() else []

    async def run(self) -> None:
        backend = self.bridge.backend
        generation = self.bridge.generation
        while not self._stopping:
            generation = await self.bridge.wait_changed(generation, self.timing.allocation_interval_s)
            try:
                if not backend.is_leader():
                    if self.term:
                        log.info("no longer leader (term %d); dropping offers", self.term)
                    self.term = 0
                    continue
                term = backend.term()
                if self.term != term:
                    await self._take_office(term)
                    continue
                await self._round()
            except NotCommitted as e:
                log.info("leader proposal not committed: %s", e)
                await asyncio.sleep(0.05)  # back off before retrying against a cluster without quorum
            except Exception:
                log.exception("leader round failed")
                await asyncio.sleep(0.2)

    async def _take_office(self, term: int) -> None:
        self.term = 0
        in_office = self.bridge.read(lambda st: st.leader_term == term and st.leader_id == self.node_id)
        if not in_office:
            result = await self.bridge.propose(
                LeaderElected(term, self.node_id, now_ms()), self.timing.request_timeout_s
            )
            if not result.ok and result.code != "stale_term":
                log.warning("leader barrier refused: %s", result.message)
                return
            in_office = self.bridge.read(lambda st: st.leader_term == term and st.leader_id == self.node_id)
            if not in_office:
                return
        if not self.bridge.backend.is_leader() or self.bridge.backend.term() != term:
            return
        log.info("acting as leader in term %d", term)
        self.term = term
        self.active_since = time.monotonic()
        self.allocator = Allocator(self.timing.offer_timeout_s)  # offers are rebuilt, never inherited
        self.seen = {}
        self.removals.clear()
        self.revive_needed = True
        self.stats.terms_led += 1
        self.stats.first_launch_at = None

    async def _round(self) -> None:
        mono = time.monotonic()
        self.stats.rounds += 1
        self.allocator.expire(mono)
        lost, drained = self.bridge.read(lambda st: self._liveness(st, mono))
        if lost:
            await self._declare_lost(lost)
        if drained:
            result = await self.bridge.propose(
                KillAttempts(self.term, now_ms(), drained, "drain deadline passed"),
                self.timing.request_timeout_s,
            )
            if result.ok:
                log.info("drain deadline: killing %d attempt(s)", len(result.value["marked"]))
        if mono - self._last_purge > PURGE_EVERY_S:
            self._last_purge = mono
            await self._purge()
        if self.bridge.generation != self._last_generation:
            # something was applied: new jobs, finished dependencies or retries may have made tasks ready
            self._last_generation = self.bridge.generation
            self.revive_needed = True
        if self.revive_needed:
            self.allocator.revive(WORKFLOW_FRAMEWORK)
            self.revive_needed = False
        t_ms = now_ms()

        def decide(st: State) -> tuple[list[Offer], list[list[str]], list[tuple[str, Resources]]]:
            new = self.allocator.allocate(st, [WORKFLOW_FRAMEWORK], mono)
            mine = [o for o in self.allocator.offers.values() if o.framework_id == WORKFLOW_FRAMEWORK]
            placements, declines = place(st, mine, t_ms)
            for oid in declines:
                self.allocator.decline(oid, self.timing.decline_refuse_s, mono)
            used: dict[str, Resources] = {}
            for p in placements:
                used[p.offer_id] = used.get(p.offer_id, Resources(0, 0, 0)) + p.resources
            for oid, res in used.items():
                self.allocator.accept(oid, res)
            return (
                new,
                [[p.job_id, p.task, p.agent_id] for p in placements],
                [(p.agent_id, p.resources) for p in placements],
            )

        _new, placements, reserved = self.bridge.read(decide)
        if not placements:
            return
        try:
            result = await self.bridge.propose(Launch(self.term, t_ms, placements), self.timing.request_timeout_s)
        finally:
            for agent_id, res in reserved:
                self.allocator.launched(agent_id, res)
        if not result.ok:
            log.info("launch refused: %s %s", result.code, result.message)
            if result.code == "stale_term":
                self.term = 0
            return
        launched, refused = result.value["launched"], result.value["refused"]
        self.stats.launches_committed += len(launched)
        self.stats.launches_refused += len(refused)
        if launched and self.stats.first_launch_at is None:
            self.stats.first_launch_at = time.monotonic()
        if refused:
            log.info("%d placement(s) refused by apply, e.g. %s", len(refused), refused[0])

    async def _purge(self) -> None:
        cutoff = now_ms() - int(self.timing.job_retention_s * 1000)

        def expired(st: State) -> list[str]:
            out = []
            for job in st.jobs.values():
                if job.state in JOB_TERMINAL and job.finished_at is not None and job.finished_at < cutoff:
                    out.append(job.id)
                    if len(out) >= PURGE_BATCH:
                        break
            return out

        job_ids = self.bridge.read(expired)
        if job_ids:
            result = await self.bridge.propose(PurgeJobs(self.term, now_ms(), job_ids), self.timing.request_timeout_s)
            if result.ok:
                log.info("forgot %d finished job(s) past retention", len(result.value["purged"]))

    def _liveness(self, st: State, mono: float) -> tuple[list[list[Any]], list[str]]:
        """Agents whose heartbeats stopped, measured on this leader's monotonic clock; drain kills due."""
        lost: list[list[Any]] = []
        for agent in st.agents.values():
            prev = self.seen.get(agent.id)
            if prev is None or prev[0] != agent.heartbeats:
                # first sight after taking office counts as contact: that is the grace window
                self.seen[agent.id] = (agent.heartbeats, mono)
                continue
            if agent.state == AgentState.UNREACHABLE:
                continue
            silent = mono - prev[1]
            if silent > self.agent_timeout_s and mono - self.active_since > self.grace_s:
                lost.append([agent.id, agent.heartbeats])
        drained: list[str] = []
        wall = now_ms()
        for agent in st.agents.values():
            if agent.drain_deadline is not None and agent.state == AgentState.DRAINING and wall >= agent.drain_deadline:
                drained.extend(a for a in agent.attempts if st.attempts[a].kill_reason is None)
        return lost, drained

    async def _declare_lost(self, candidates: list[list[Any]]) -> None:
        mono = time.monotonic()
        while self.removals and mono - self.removals[0] > REMOVAL_WINDOW_S:
            self.removals.popleft()
        n_agents = self.bridge.read(lambda st: len(st.agents))
        limit = max(1, math.floor(n_agents * REMOVAL_FRACTION))
        budget = limit - len(self.removals)
        if budget <= 0:
            log.warning(
                "agent removal limit reached (%d per %.0fs); deferring %s",
                limit,
                REMOVAL_WINDOW_S,
                candidates,
            )
            return
        chosen = candidates[:budget]
        result = await self.bridge.propose(
            AgentLost(self.term, now_ms(), chosen, f"no heartbeat for {self.agent_timeout_s:.1f}s"),
            self.timing.request_timeout_s,
        )
        if result.ok:
            for agent_id, _ in chosen:
                if agent_id in result.value["spared"]:
                    continue
                self.removals.append(mono)
                self.allocator.rescind_agent(agent_id)
                self.stats.agents_lost += 1
            self.revive_needed = True
            log.warning("declared unreachable: %s (attempts lost: %d)", chosen, len(result.value["lost"]))
