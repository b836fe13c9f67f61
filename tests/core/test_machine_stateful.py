"""Hypothesis drives the pure state machine with valid, invalid and adversarial commands.

Invariants after every step: no agent is over-committed and its accounted use equals its live attempts; no
attempt was launched before all its task's dependencies finished; at most one live attempt per task; a rejected
command changed nothing; a fresh replica fed the same log reaches the same digest; snapshot -> restore keeps it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from consensus.apply import WORKFLOW_FRAMEWORK, Machine, Result
from consensus.codec import encode
from consensus.commands import (
    AgentLost,
    Batch,
    CancelJob,
    Command,
    DrainAgent,
    Heartbeat,
    KillAttempts,
    Launch,
    LeaderElected,
    PurgeJobs,
    RegisterAgent,
    RetryJob,
    StatusUpdate,
    SubmitJob,
)
from consensus.spec import ZERO
from consensus.state import ACTIVE, TaskState

AGENTS = ["a1", "a2", "a3"]
TYPES = ["env_setup", "job_submission", "monitoring"]
REPORTABLE = ["STARTING", "RUNNING", "FINISHED", "FAILED", "KILLED", "LOST"]


@st.composite
def job_specs(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 5))
    tasks = []
    for i in range(n):
        earlier = [f"t{j}" for j in range(i)]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)) if earlier else []
        if draw(st.integers(0, 30)) == 0:
            deps = [f"t{n - 1}"]  # sometimes a cycle or a self-dependency: must be rejected
        tasks.append(
            {
                "name": f"t{i}",
                "command": ["true"],
                "type": draw(st.sampled_from([None, *TYPES])),
                "resources": {
                    "cpus": draw(st.sampled_from([0.1, 0.5, 1.0, 2.5])),
                    "mem_mb": draw(st.sampled_from([16, 256, 1024])),
                    "disk_mb": 1,
                },
                "depends_on": deps,
                "max_attempts": draw(st.integers(1, 3)),
                "backoff_s": draw(st.sampled_from([0, 0.5])),
            }
        )
    return {"name": "job", "priority": draw(st.sampled_from(["URGENT", "NORMAL"])), "tasks": tasks}


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = Machine()
        self.log: list[bytes] = []
        self.term = 0
        self.now = 1_000
        self.incarnations: dict[str, str] = {}
        self.jobs = 0

    def submit(self, cmd: Command | bytes) -> Result:
        data = cmd if isinstance(cmd, bytes) else encode(cmd)
        before = self.m.state.to_wire()[2:]
        self.log.append(data)
        result = self.m.apply(data)
        if not result.ok:
            assert self.m.state.to_wire()[2:] == before, f"rejected {result.code} changed state"
        assert result.code != "internal_error", result.message
        return result

    def tick(self, ms: int = 10) -> int:
        self.now += ms
        return self.now

    @initialize()
    def boot(self) -> None:
        self.term = 1
        assert self.submit(LeaderElected(1, "n1", self.tick())).ok
        for i, a in enumerate(AGENTS):
            self.incarnations[a] = "i0"
            types = TYPES if i == 0 else TYPES[i:]
            assert self.submit(RegisterAgent(a, "i0", 2000, 2048, 100, types, {"rack": str(i)}, self.tick())).ok

    @rule(ms=st.integers(0, 2000))
    def time_passes(self, ms: int) -> None:
        self.tick(ms)

    @rule()
    def new_leader(self) -> None:
        self.term += 1
        assert self.submit(LeaderElected(self.term, "n2", self.tick())).ok

    @rule(spec=job_specs(), reuse_key=st.booleans())
    def submit_job(self, spec: dict[str, Any], reuse_key: bool) -> None:
        key = "r0" if reuse_key else f"r{self.jobs + 1}"
        self.jobs += 1
        r = self.submit(SubmitJob(key, f"j{self.jobs}", WORKFLOW_FRAMEWORK, spec, self.tick()))
        if r.ok and reuse_key and r.value["duplicate"]:
            assert r.value["job_id"] != f"j{self.jobs}"

    @rule(data=st.data(), stale=st.integers(0, 6))
    def launch(self, data: Any, stale: int) -> None:
        st_ = self.m.state
        placements = []
        for job_id, task in list(st_.runnable)[:6]:
            placements.append([job_id, task, data.draw(st.sampled_from(AGENTS))])
        if data.draw(st.booleans()) and st_.jobs:
            job = data.draw(st.sampled_from(sorted(st_.jobs)))
            task = data.draw(st.sampled_from(sorted(st_.jobs[job].tasks)))
            placements.append([job, task, data.draw(st.sampled_from([*AGENTS, "nobody"]))])
        term = self.term - 1 if stale == 0 else self.term
        r = self.submit(Launch(term, self.tick(), placements))
        if term != self.term:
            assert not r.ok and r.code == "stale_term"

    @rule(data=st.data())
    @precondition(lambda self: bool(self.m.state.attempts))
    def report(self, data: Any) -> None:
        att_id = data.draw(st.sampled_from(sorted(self.m.state.attempts)))
        att = self.m.state.attempts[att_id]
        state = data.draw(st.sampled_from(REPORTABLE))
        wrong = data.draw(st.integers(0, 5)) == 0
        agent = data.draw(st.sampled_from(AGENTS)) if wrong else att.agent_id
        code = 0 if state == "FINISHED" else data.draw(st.sampled_from([None, 1]))
        self.submit(StatusUpdate(agent, self.incarnations[agent], self.tick(), [[att_id, state, code, "m"]]))

    @rule(agent=st.sampled_from(AGENTS))
    def heartbeat(self, agent: str) -> None:
        assert self.submit(Heartbeat(agent, self.incarnations[agent], self.tick())).ok

    @rule(agent=st.sampled_from(AGENTS))
    def agent_restarts(self, agent: str) -> None:
        inc = f"i{int(self.incarnations[agent][1:]) + 1}"
        self.incarnations[agent] = inc
        assert self.submit(RegisterAgent(agent, inc, 2000, 2048, 100, TYPES, {}, self.tick())).ok
        assert not self.m.state.agents[agent].attempts

    @rule(agent=st.sampled_from([*AGENTS, "ghost"]), heard_since=st.booleans())
    def agent_lost(self, agent: str, heard_since: bool) -> None:
        known = self.m.state.agents.get(agent)
        seen = (known.heartbeats if known else 0) - (1 if heard_since else 0)
        was = known.state.value if known else None
        r = self.submit(AgentLost(self.term, self.tick(), [[agent, seen]], "silent"))
        if r.ok and known is not None:
            if heard_since and was != "unreachable":
                assert r.value["spared"] == [agent] and known.state.value == was
            else:
                assert not known.attempts and known.state.value == "unreachable"

    @rule(agent=st.sampled_from(AGENTS), deadline=st.integers(0, 5000))
    def drain(self, agent: str, deadline: int) -> None:
        assert self.submit(DrainAgent(agent, self.now + deadline, self.tick())).ok

    @rule(data=st.data())
    @precondition(lambda self: bool(self.m.state.attempts))
    def kill(self, data: Any) -> None:
        att_id = data.draw(st.sampled_from(sorted(self.m.state.attempts)))
        self.submit(KillAttempts(self.term, self.tick(), [att_id], "drain"))

    @rule(data=st.data())
    @precondition(lambda self: bool(self.m.state.jobs))
    def cancel_or_retry(self, data: Any) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.m.state.jobs)))
        if data.draw(st.booleans()):
            self.submit(CancelJob(job_id, "user", self.tick()))
        else:
            self.submit(RetryJob(f"retry-{self.tick()}", job_id, self.now))

    @rule(spec=job_specs(), agent=st.sampled_from(AGENTS))
    def group_commit(self, spec: dict[str, Any], agent: str) -> None:
        self.jobs += 1
        subs = [
            encode(Heartbeat(agent, self.incarnations[agent], self.tick())),
            encode(SubmitJob(f"r{self.jobs}", f"j{self.jobs}", WORKFLOW_FRAMEWORK, spec, self.now)),
            b"\xc1garbage",
            encode(Batch([encode(Heartbeat(agent, self.incarnations[agent], self.now))])),
        ]
        r = self.submit(Batch(subs))
        assert r.ok and len(r.value) == 4
        assert r.value[0].ok and r.value[2].code == "malformed" and r.value[3].code == "invalid"
        assert all(sub.index == r.index for sub in r.value)

    @rule(data=st.data())
    @precondition(lambda self: bool(self.m.state.jobs))
    def purge(self, data: Any) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.m.state.jobs)), max_size=3, unique=True))
        r = self.submit(PurgeJobs(self.term, self.tick(), [*ids, "ghost"]))
        assert r.ok
        for job_id in r.value["purged"]:
            assert job_id not in self.m.state.jobs
            assert all(a.job_id != job_id for a in self.m.state.attempts.values())
            assert job_id not in self.m.state.requests.values()
        for job_id in set(ids) - set(r.value["purged"]):
            job = self.m.state.jobs[job_id]
            live = any(self.m.state.attempts[a].state in ACTIVE for t in job.tasks.values() for a in t.attempts)
            assert job.state.value in ("pending", "running") or live

    @rule(blob=st.binary(max_size=40))
    def garbage(self, blob: bytes) -> None:
        assert not self.submit(blob).ok

    # ------------------------------------------------------------------ invariants

    @invariant()
    def resources_never_overcommitted(self) -> None:
        st_ = self.m.state
        for agent in st_.agents.values():
            live = [a for a in st_.attempts.values() if a.agent_id == agent.id and a.state in ACTIVE]
            total = ZERO
            for a in live:
                total = total + st_.jobs[a.job_id].tasks[a.task].spec.resources
            assert total == agent.used
            assert set(agent.attempts) == {a.id for a in live}
            assert agent.used.fits_in(agent.total), f"{agent.id} over-committed: {agent.used} > {agent.total}"

    @invariant()
    def dependencies_finished_before_launch(self) -> None:
        st_ = self.m.state
        for att in st_.attempts.values():
            task = st_.jobs[att.job_id].tasks[att.task]
            for dep in task.spec.depends_on:
                dep_task = st_.jobs[att.job_id].tasks[dep]
                assert dep_task.state == TaskState.FINISHED
                done = [st_.attempts[x] for x in dep_task.attempts if st_.attempts[x].state == TaskState.FINISHED]
                assert done and done[-1].finished_at is not None and done[-1].finished_at <= att.launched_at

    @invariant()
    def derived_counts_match(self) -> None:
        for job in self.m.state.jobs.values():
            unfinished = sum(1 for t in job.tasks.values() if t.state != TaskState.FINISHED)
            assert job.unfinished == unfinished
            if job.state.value == "complete":
                assert unfinished == 0

    @invariant()
    def one_live_attempt_per_task(self) -> None:
        seen: set[tuple[str, str]] = set()
        for att in self.m.state.attempts.values():
            if att.state in ACTIVE:
                key = (att.job_id, att.task)
                assert key not in seen
                seen.add(key)

    @invariant()
    def replicas_agree_and_snapshots_restore(self) -> None:
        replica = Machine()
        for data in self.log:
            replica.apply(data)
        digest = self.m.digest()
        assert replica.digest() == digest
        restored = Machine()
        restored.restore(self.m.snapshot())
        assert restored.digest() == digest
        assert restored.state.runnable == self.m.state.runnable
        assert {a: x.used for a, x in restored.state.agents.items()} == {
            a: x.used for a, x in self.m.state.agents.items()
        }


TestScheduler = SchedulerMachine.TestCase
