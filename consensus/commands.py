"""Command types of the replicated log.

The numbering is append-only: a number, once released, keeps its meaning forever (Nomad's message types work the
same way). Every command is a frozen dataclass; its body on the wire is a msgpack array of its fields, in
declaration order, and :mod:`consensus.codec` checks each field's type before a handler ever sees it.

Time enters only here: whoever proposes a command stamps ``now`` (Unix milliseconds) into it. Commands whose
effects are leader decisions carry the proposing leader's Raft ``term`` and are fenced in ``apply``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any


class CommandType(IntEnum):
    LEADER_ELECTED = 1
    REGISTER_FRAMEWORK = 2
    REGISTER_AGENT = 3
    HEARTBEAT = 4
    SUBMIT_JOB = 5
    CANCEL_JOB = 6
    LAUNCH = 7
    STATUS_UPDATE = 8
    AGENT_LOST = 9
    DRAIN_AGENT = 10
    RETRY_JOB = 11
    KILL_ATTEMPTS = 12
    BATCH = 13
    PURGE_JOBS = 14


@dataclass(frozen=True, slots=True)
class LeaderElected:
    """A new leader's barrier: it allocates only after this entry is applied in its own term."""

    term: int
    node_id: str
    now: int


@dataclass(frozen=True, slots=True)
class RegisterFramework:
    framework_id: str
    name: str
    now: int


@dataclass(frozen=True, slots=True)
class RegisterAgent:
    agent_id: str
    incarnation: str  # new on every agent process start; a change means the old processes are gone
    cpus_m: int
    mem_mb: int
    disk_mb: int
    task_types: list[str]
    attributes: dict[str, str]
    now: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    agent_id: str
    incarnation: str
    now: int


@dataclass(frozen=True, slots=True)
class SubmitJob:
    request_id: str
    job_id: str
    framework_id: str
    spec: dict[str, Any]  # as submitted (JSON-shaped); validated in apply by consensus.spec.parse_job
    now: int


@dataclass(frozen=True, slots=True)
class CancelJob:
    job_id: str
    reason: str
    now: int


@dataclass(frozen=True, slots=True)
class Launch:
    """Many placements in one entry. Each is re-checked against replicated state when applied."""

    term: int
    now: int
    # [job_id, task_name, agent_id] per placement
    placements: list[list[str]]


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """An agent's batch of attempt status changes; it also counts as a heartbeat."""

    agent_id: str
    incarnation: str
    now: int
    # [attempt_id, state, exit_code or None, message] per update
    updates: list[list[Any]]


@dataclass(frozen=True, slots=True)
class AgentLost:
    """Leader decision. Each agent is ``[agent_id, heartbeats]``: the heartbeat count the leader saw go silent.
    An agent whose count has moved since (its heartbeat committed meanwhile) is left alone."""

    term: int
    now: int
    agents: list[list[Any]]
    reason: str


@dataclass(frozen=True, slots=True)
class DrainAgent:
    agent_id: str
    deadline_ms: int  # absolute Unix ms after which running attempts are killed and rescheduled; -1 ends a drain
    now: int


@dataclass(frozen=True, slots=True)
class RetryJob:
    request_id: str
    job_id: str
    now: int


@dataclass(frozen=True, slots=True)
class KillAttempts:
    """Leader decision: stop these attempts (drain deadline passed); they are rescheduled, not failed."""

    term: int
    now: int
    attempt_ids: list[str]
    reason: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Several encoded commands proposed together (group commit): applied in order, each with its own result.
    A batch inside a batch is refused."""

    entries: list[bytes]


@dataclass(frozen=True, slots=True)
class PurgeJobs:
    """Leader decision: forget jobs that ended long enough ago (their attempts, events and request ids go too).
    A job that is not terminal, or still has a live attempt, is left alone."""

    term: int
    now: int
    job_ids: list[str]


Command = (
    LeaderElected
    | RegisterFramework
    | RegisterAgent
    | Heartbeat
    | SubmitJob
    | CancelJob
    | Launch
    | StatusUpdate
    | AgentLost
    | DrainAgent
    | RetryJob
    | KillAttempts
    | Batch
    | PurgeJobs
)

COMMAND_CLASSES: dict[CommandType, type[Any]] = {
    CommandType.LEADER_ELECTED: LeaderElected,
    CommandType.REGISTER_FRAMEWORK: RegisterFramework,
    CommandType.REGISTER_AGENT: RegisterAgent,
    CommandType.HEARTBEAT: Heartbeat,
    CommandType.SUBMIT_JOB: SubmitJob,
    CommandType.CANCEL_JOB: CancelJob,
    CommandType.LAUNCH: Launch,
    CommandType.STATUS_UPDATE: StatusUpdate,
    CommandType.AGENT_LOST: AgentLost,
    CommandType.DRAIN_AGENT: DrainAgent,
    CommandType.RETRY_JOB: RetryJob,
    CommandType.KILL_ATTEMPTS: KillAttempts,
    CommandType.BATCH: Batch,
    CommandType.PURGE_JOBS: PurgeJobs,
}
TYPE_OF: dict[type[Any], CommandType] = {cls: t for t, cls in COMMAND_CLASSES.items()}

# Field types checked by the codec, derived once from the annotations above.
_PY_TYPES: dict[str, tuple[type[Any], ...]] = {
    "int": (int,),
    "str": (str,),
    "list[str]": (list,),
    "list[list[str]]": (list,),
    "list[list[Any]]": (list,),
    "dict[str, str]": (dict,),
    "dict[str, Any]": (dict,),
    "list[bytes]": (list,),
}
FIELD_TYPES: dict[type[Any], list[tuple[str, str]]] = {
    cls: [(f.name, str(f.type)) for f in fields(cls)] for cls in COMMAND_CLASSES.values()
}
for _cls, _fs in FIELD_TYPES.items():
    for _name, _t in _fs:
        assert _t in _PY_TYPES, f"{_cls.__name__}.{_name}: codec cannot check {_t}"


def field_ok(value: Any, annotation: str) -> bool:
    if isinstance(value, bool):
        return False
    if not isinstance(value, _PY_TYPES[annotation]):
        return False
    if annotation == "list[str]":
        return all(isinstance(x, str) for x in value)
    if annotation == "list[list[str]]":
        return all(isinstance(x, list) and all(isinstance(y, str) for y in x) for x in value)
    if annotation == "list[list[Any]]":
        return all(isinstance(x, list) for x in value)
    if annotation == "dict[str, str]":
        return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if annotation == "dict[str, Any]":
        return all(isinstance(k, str) for k in value)
    if annotation == "list[bytes]":
        return all(isinstance(x, bytes) for x in value)
    return True
