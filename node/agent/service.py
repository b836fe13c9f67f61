"""The agent every node runs (unless configured off): register, heartbeat, run what the log assigns, report.

It acts only on committed state. It launches attempts the log assigned to it, kills attempts the log wants
stopped or that are no longer live there (replaced after this agent was declared unreachable), reports exits in
batches (one ``StatusUpdate`` entry carries many), and renews the lease its task supervisors fence on: the lease
runs from the moment a heartbeat was *sent* until ``agent_lease_s`` later, and is extended only once that
heartbeat is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from consensus.apply import Result
from consensus.commands import Command, Heartbeat, RegisterAgent, StatusUpdate
from consensus.state import ACTIVE, State, TaskState
from node.agent.executor import Executor, ExitReport
from node.bridge import Bridge, NotCommitted
from node.config import AgentConfig, Timing
from node.leader.loop import now_ms

log = logging.getLogger("conclave.agent")

MAX_UPDATES_PER_ENTRY = 5000


def register_command(agent_id: str, incarnation: str, cfg: AgentConfig) -> RegisterAgent:
    return RegisterAgent(
        agent_id,
        incarnation,
        round(cfg.cpus * 1000),
        cfg.mem_mb,
        cfg.disk_mb,
        list(cfg.task_types),
        dict(cfg.attributes),
        now_ms(),
    )


async def propose_until_committed(
    bridge: Bridge, make: Callable[[], Command], timing: Timing, stopped: Callable[[], bool]
) -> Result | None:
    """Propose a fresh command (re-stamped each try) until it commits, backing off; None once ``stopped()``."""
    delay = 0.1
    while not stopped():
        cmd = make()
        try:
            return await bridge.propose(cmd, timing.request_timeout_s)
        except NotCommitted as e:
            log.info("%s not committed yet (%s); retrying", type(cmd).__name__, e.code)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    return None


@dataclass
class Work:
    launch: list[tuple[str, list[str], dict[str, str], float | None]] = field(default_factory=list)
    kill: list[tuple[str, str]] = field(default_factory=list)
    never_started: list[tuple[str, str]] = field(default_factory=list)  # stopped before we ran it
    orphaned: list[str] = field(default_factory=list)  # live in the log, but no process here and never ours


@dataclass
class AgentService:
    bridge: Bridge
    agent_id: str
    config: AgentConfig
    timing: Timing
    data_dir: Path
    fencing: bool = True
    incarnation: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    registered: bool = False
    lease_deadline: float = 0.0
    updates: list[list[object]] = field(default_factory=list)
    launched: set[str] = field(default_factory=set)  # attempts this incarnation has started
    kills_sent: set[str] = field(default_factory=set)
    executor: Executor = field(init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    def __post_init__(self) -> None:
        lease_file = self.data_dir / "agent.lease" if self.fencing else None
        if lease_file is not None:
            lease_file.unlink(missing_ok=True)
        self.executor = Executor(self.data_dir / "sandboxes", self._on_exit, lease_file=lease_file)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        await self._register()
        hb = asyncio.create_task(self._heartbeat_loop())
        try:
            generation = self.bridge.generation
            while not self._stopping:
                generation = await self._wait(generation)
                try:
                    await self._reconcile()
                    await self._flush()
                except OSError as e:
                    # the node stays a voter and keeps serving; the agent retries on the next change
                    log.error("agent step failed: %s", e)
                    await asyncio.sleep(0.5)
        finally:
            hb.cancel()

    async def _wait(self, generation: int) -> int:
        """Until the log moved, a local process exited, or 100 ms passed."""
        if not self._wake.is_set():
            changed = asyncio.ensure_future(self.bridge.wait_changed(generation, 0.1))
            woken = asyncio.ensure_future(self._wake.wait())
            _done, pending = await asyncio.wait({changed, woken}, return_when=asyncio.FIRST_COMPLETED)
            for p in pending:
                p.cancel()
        self._wake.clear()
        return self.bridge.generation

    async def stop(self) -> None:
        self._stopping = True
        await self.executor.shutdown()
        if self.updates:
            try:
                await self._flush()
            except Exception:
                log.info("could not report final updates; the leader will reconcile")

    async def _register(self) -> None:
        sent = time.monotonic()

        def stamp() -> RegisterAgent:
            nonlocal sent
            sent = time.monotonic()
            return register_command(self.agent_id, self.incarnation, self.config)

        result = await propose_until_committed(self.bridge, stamp, self.timing, lambda: self._stopping)
        if result is not None:
            if not result.ok:
                raise RuntimeError(f"agent registration refused: {result.message}")
            self._renew(sent)
            self.registered = True
            if result.value["lost"]:
                log.warning("previous incarnation's attempts reported lost: %s", result.value["lost"])
            log.info("agent %s registered (incarnation %s)", self.agent_id, self.incarnation)

    def _renew(self, sent_monotonic: float) -> None:
        deadline = sent_monotonic + self.timing.agent_lease_s
        if deadline > self.lease_deadline:
            if self.fencing:
                try:
                    self.executor.renew_lease(deadline)
                except OSError as e:
                    # e.g. a full disk: the supervisors keep the old deadline and fence when it lapses (safe)
                    log.error("cannot renew the lease file: %s; running tasks will be fenced", e)
                    return
            self.lease_deadline = deadline

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.timing.heartbeat_interval_s)
            sent = time.monotonic()
            try:
                result = await self.bridge.propose(
                    Heartbeat(self.agent_id, self.incarnation, now_ms()), self.timing.agent_lease_s
                )
            except NotCommitted:
                self._fence_if_expired()
                continue
            if result.ok:
                self._renew(sent)
            elif result.code == "stale_incarnation":
                log.error("this agent was replaced by a newer incarnation; stopping its work")
                self._stopping = True
            self._fence_if_expired()

    def _fence_if_expired(self) -> None:
        if self.fencing and time.monotonic() > self.lease_deadline:
            for att in self.executor.running():
                if att not in self.kills_sent:
                    log.warning("lease expired: fencing %s", att)
                    self.kills_sent.add(att)
                    self.executor.kill(att, "fenced: lease expired")

    # ------------------------------------------------------------------ work

    def _plan(self, st: State) -> Work:
        work = Work()
        agent = st.agents.get(self.agent_id)
        if agent is None or agent.incarnation != self.incarnation:
            return work
        running = self.executor.running()
        for att_id in agent.attempts:
            att = st.attempts[att_id]
            if att.kill_reason is not None:
                if att_id in running and att_id not in self.kills_sent:
                    work.kill.append((att_id, att.kill_reason))
                elif att_id not in running and att_id not in self.launched:
                    work.never_started.append((att_id, att.kill_reason))
                continue
            if att_id in self.launched:
                continue
            if att.state == TaskState.STAGING:
                job = st.jobs[att.job_id]
                spec = job.tasks[att.task].spec
                env = dict(spec.env)
                env.update(
                    CONCLAVE_JOB_ID=att.job_id,
                    CONCLAVE_TASK_NAME=att.task,
                    CONCLAVE_ATTEMPT_ID=att_id,
                    CONCLAVE_AGENT_ID=self.agent_id,
                )
                timeout = None if spec.timeout_ms is None else spec.timeout_ms / 1000
                work.launch.append((att_id, list(spec.command), env, timeout))
            else:
                work.orphaned.append(att_id)
        # processes whose attempt is no longer live for us in the log: superseded, lost, or replaced
        for att_id in running:
            a = st.attempts.get(att_id)
            if (a is None or a.state not in ACTIVE or a.agent_id != self.agent_id) and att_id not in self.kills_sent:
                work.kill.append((att_id, "attempt is no longer live in the cluster"))
        return work

    async def _reconcile(self) -> None:
        if not self.registered:
            return
        work = self.bridge.read(self._plan)
        for att_id, reason in work.kill:
            self.kills_sent.add(att_id)
            self.executor.kill(att_id, reason)
        for att_id, reason in work.never_started:
            self.launched.add(att_id)
            self.updates.append([att_id, "KILLED", None, f"killed before start: {reason}"])
        for att_id in work.orphaned:
            self.launched.add(att_id)
            self.updates.append([att_id, "LOST", None, "agent has no process for this attempt"])
        if work.launch and self.fencing and time.monotonic() > self.lease_deadline:
            return  # never start work while our own lease has lapsed
        for att_id, argv, env, timeout in work.launch:
            self.launched.add(att_id)
            await self.executor.launch(att_id, argv, env, timeout)
            if att_id in self.executor.running():
                self.updates.append([att_id, "RUNNING", None, ""])

    def _on_exit(self, report: ExitReport) -> None:
        self.updates.append([report.attempt_id, report.state, report.exit_code, report.message])
        self._wake.set()

    async def _flush(self) -> None:
        while self.updates and self.registered:
            batch = self.updates[:MAX_UPDATES_PER_ENTRY]
            sent = time.monotonic()
            try:
                result = await self.bridge.propose(
                    StatusUpdate(self.agent_id, self.incarnation, now_ms(), batch),
                    self.timing.request_timeout_s,
                )
            except NotCommitted as e:
                log.info("status update not committed (%s); will retry", e.code)
                return
            del self.updates[: len(batch)]
            if result.ok:
                self._renew(sent)
            else:
                log.warning("status update refused: %s", result.message)
