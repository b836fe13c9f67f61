"""The replicated scheduler state: frameworks, agents, jobs, tasks and attempts.

Only :mod:`consensus.apply` mutates it. Everything here is plain data with a msgpack wire form; derived indexes
(resources in use, attempts per agent, runnable tasks) are rebuilt from the wire form on restore and are not
part of the digest. Iteration order is insertion order everywhere, which is the log order, so two replicas that
applied the same log, or one restored from the other's snapshot, serialize to the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from consensus.spec import ZERO, JobSpec, Resources, TaskSpec

SNAPSHOT_VERSION = 1


class TaskState(StrEnum):
    PENDING = "PENDING"
    STAGING = "STAGING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"
    LOST = "LOST"


ACTIVE = frozenset({TaskState.STAGING, TaskState.STARTING, TaskState.RUNNING})
TERMINAL = frozenset({TaskState.FINISHED, TaskState.FAILED, TaskState.KILLED, TaskState.LOST})
# forward order of live states; an update may skip ahead but never go back
LIVE_ORDER = {TaskState.STAGING: 0, TaskState.STARTING: 1, TaskState.RUNNING: 2}


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_TERMINAL = frozenset({JobState.COMPLETE, JobState.FAILED, JobState.CANCELLED})


class AgentState(StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    UNREACHABLE = "unreachable"


@dataclass(slots=True)
class Framework:
    id: str
    name: str
    registered_at: int

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.registered_at]

    @staticmethod
    def from_wire(w: list[Any]) -> Framework:
        return Framework(*w)


@dataclass(slots=True)
class Agent:
    id: str
    incarnation: str
    total: Resources
    task_types: tuple[str, ...]
    attributes: dict[str, str]
    state: AgentState
    registered_at: int
    last_heartbeat: int  # cluster time of the last committed heartbeat (informational; liveness is leader-timed)
    heartbeats: int  # count of committed heartbeats; the leader watches it change
    drain_deadline: int | None = None
    # derived
    used: Resources = ZERO
    attempts: dict[str, None] = field(default_factory=dict)  # live attempt ids, insertion ordered

    def free(self) -> Resources:
        return self.total - self.used

    def to_wire(self) -> list[Any]:
        return [
            self.id,
            self.incarnation,
            self.total.to_wire(),
            list(self.task_types),
            self.attributes,
            str(self.state),
            self.registered_at,
            self.last_heartbeat,
            self.heartbeats,
            self.drain_deadline,
        ]

    @staticmethod
    def from_wire(w: list[Any]) -> Agent:
        return Agent(
            id=w[0],
            incarnation=w[1],
            total=Resources.from_wire(w[2]),
            task_types=tuple(w[3]),
            attributes=dict(w[4]),
            state=AgentState(w[5]),
            registered_at=w[6],
            last_heartbeat=w[7],
            heartbeats=w[8],
            drain_deadline=w[9],
        )


@dataclass(slots=True)
class Attempt:
    id: str
    job_id: str
    task: str
    number: int
    agent_id: str
    state: TaskState
    term: int
    launched_at: int
    started_at: int | None = None
    finished_at: int | None = None
    exit_code: int | None = None
    message: str = ""
    kill_reason: str | None = None  # set when the cluster wants this attempt stopped

    def to_wire(self) -> list[Any]:
        return [
            self.id,
            self.job_id,
            self.task,
            self.number,
            self.agent_id,
            str(self.state),
            self.term,
            self.launched_at,
            self.started_at,
            self.finished_at,
            self.exit_code,
            self.message,
            self.kill_reason,
        ]

    @staticmethod
    def from_wire(w: list[Any]) -> Attempt:
        a = Attempt(*w)
        a.state = TaskState(a.state)
        return a


@dataclass(slots=True)
class Task:
    spec: TaskSpec
    state: TaskState = TaskState.PENDING
    attempts: list[str] = field(default_factory=list)
    eligible_at: int = 0  # backoff: not launched before this cluster time
    avoid: list[str] = field(default_factory=list)  # agents where earlier attempts failed or were lost
    failures: int = 0  # attempts that ended FAILED since the job was (re)submitted; bounded by max_attempts
    losses: int = 0  # attempts lost to infrastructure (LOST, or KILLED by drain); bounded by MAX_LOSSES
    unfinished_deps: int = 0  # derived

    def to_wire(self) -> list[Any]:
        return [
            self.spec.to_wire(),
            str(self.state),
            self.attempts,
            self.eligible_at,
            self.avoid,
            self.failures,
            self.losses,
        ]

    @staticmethod
    def from_wire(w: list[Any]) -> Task:
        return Task(TaskSpec.from_wire(w[0]), TaskState(w[1]), list(w[2]), w[3], list(w[4]), w[5], w[6])


@dataclass(slots=True)
class Job:
    id: str
    request_id: str
    framework_id: str
    spec: JobSpec
    seq: int  # submission order
    submitted_at: int
    state: JobState = JobState.PENDING
    tasks: dict[str, Task] = field(default_factory=dict)
    finished_at: int | None = None
    message: str = ""
    # audit trail: [log index, cluster time ms, kind, task or "", attempt or "", detail]
    events: list[list[Any]] = field(default_factory=list)
    retry_keys: list[str] = field(default_factory=list)  # request ids of RetryJob commands (de-duplication)
    # derived: task name -> names of tasks depending on it
    dependents: dict[str, list[str]] = field(default_factory=dict)
    unfinished: int = 0  # derived: tasks not FINISHED

    def to_wire(self) -> list[Any]:
        return [
            self.id,
            self.request_id,
            self.framework_id,
            self.spec.to_wire(),
            self.seq,
            self.submitted_at,
            str(self.state),
            [t.to_wire() for t in self.tasks.values()],
            self.finished_at,
            self.message,
            self.events,
            self.retry_keys,
        ]

    @staticmethod
    def from_wire(w: list[Any]) -> Job:
        tasks = [Task.from_wire(t) for t in w[7]]
        job = Job(
            id=w[0],
            request_id=w[1],
            framework_id=w[2],
            spec=JobSpec.from_wire(w[3]),
            seq=w[4],
            submitted_at=w[5],
            state=JobState(w[6]),
            tasks={t.spec.name: t for t in tasks},
            finished_at=w[8],
            message=w[9],
            events=w[10],
            retry_keys=list(w[11]),
        )
        job.build_dependents()
        return job

    def build_dependents(self) -> None:
        self.unfinished = sum(1 for t in self.tasks.values() if t.state != TaskState.FINISHED)
        self.dependents = {name: [] for name in self.tasks}
        for t in self.tasks.values():
            t.unfinished_deps = 0
            for d in t.spec.depends_on:
                self.dependents[d].append(t.spec.name)
                if self.tasks[d].state != TaskState.FINISHED:
                    t.unfinished_deps += 1


@dataclass(slots=True)
class State:
    applied: int = 0  # number of Conclave entries applied (accepted or rejected): the replicas' common index
    clock: int = 0  # cluster time: the largest `now` stamped into any applied command
    leader_term: int = 0
    leader_id: str = ""
    job_seq: int = 0
    frameworks: dict[str, Framework] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    attempts: dict[str, Attempt] = field(default_factory=dict)  # every attempt ever launched
    requests: dict[str, str] = field(default_factory=dict)  # request id -> job id (de-duplication)
    # derived: runnable tasks (PENDING, dependencies finished, job live), keyed (job_id, task) in log order
    runnable: dict[tuple[str, str], None] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [
            SNAPSHOT_VERSION,
            self.applied,
            self.clock,
            self.leader_term,
            self.leader_id,
            self.job_seq,
            [f.to_wire() for f in self.frameworks.values()],
            [a.to_wire() for a in self.agents.values()],
            [j.to_wire() for j in self.jobs.values()],
            [a.to_wire() for a in self.attempts.values()],
            self.requests,
        ]

    def to_bytes(self) -> bytes:
        data: bytes = msgpack.packb(self.to_wire(), use_bin_type=True)
        return data

    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @staticmethod
    def from_bytes(data: bytes) -> State:
        w = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
        if not isinstance(w, list) or not w or w[0] != SNAPSHOT_VERSION:
            raise ValueError("unsupported snapshot format")
        st = State(
            applied=w[1],
            clock=w[2],
            leader_term=w[3],
            leader_id=w[4],
            job_seq=w[5],
            frameworks={f[0]: Framework.from_wire(f) for f in w[6]},
            agents={a[0]: Agent.from_wire(a) for a in w[7]},
            jobs={j[0]: Job.from_wire(j) for j in w[8]},
            attempts={a[0]: Attempt.from_wire(a) for a in w[9]},
            requests=dict(w[10]),
        )
        st.rebuild_indexes()
        return st

    def rebuild_indexes(self) -> None:
        for agent in self.agents.values():
            agent.used = ZERO
            agent.attempts = {}
        for att in self.attempts.values():
            if att.state not in ACTIVE:
                continue
            agent = self.agents[att.agent_id]
            agent.used = agent.used + self.jobs[att.job_id].tasks[att.task].spec.resources
            agent.attempts[att.id] = None
        self.runnable = {}
        for job in self.jobs.values():
            if job.state in JOB_TERMINAL:
                continue
            for t in job.tasks.values():
                if t.state == TaskState.PENDING and t.unfinished_deps == 0:
                    self.runnable[(job.id, t.spec.name)] = None


def attempt_id_for(job_id: str, task: str, number: int) -> str:
    return f"{job_id}/{task}/{number}"


def split_attempt_id(attempt_id: str) -> tuple[str, str, int]:
    job_id, _, rest = attempt_id.partition("/")
    task, _, num = rest.rpartition("/")
    return job_id, task, int(num) if num.isdigit() else -1
