"""One handler per command type. Pure and deterministic.

Each handler first validates everything it needs and raises :class:`Reject` before touching the state, so a
rejected command changes nothing (except the applied-entry counter, which counts every log entry). Handlers read
time only from the command (``now``, stamped by the proposer) through the monotone cluster clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consensus.codec import DecodeError, decode, encode
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
    RegisterFramework,
    RetryJob,
    StatusUpdate,
    SubmitJob,
)
from consensus.spec import NAME_RE, Resources, SpecError, parse_job
from consensus.state import (
    ACTIVE,
    JOB_TERMINAL,
    LIVE_ORDER,
    Agent,
    AgentState,
    Attempt,
    Framework,
    Job,
    JobState,
    State,
    Task,
    TaskState,
    attempt_id_for,
)

WORKFLOW_FRAMEWORK = "workflow"
MAX_LOSSES = 20  # infrastructure losses tolerated per task before the job fails
MAX_BACKOFF_MS = 300_000
MAX_MESSAGE = 1000


# what an agent may report, by name; PENDING and STAGING are the cluster's to set
_REPORTABLE: dict[str, TaskState] = {s.value: s for s in TaskState if s not in (TaskState.PENDING, TaskState.STAGING)}
_EVENT_NAME = {s: "attempt_" + s.value.lower() for s in TaskState}


class Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Result:
    index: int
    ok: bool
    code: str = "ok"
    message: str = ""
    value: Any = None


def initial_state() -> State:
    st = State()
    st.frameworks[WORKFLOW_FRAMEWORK] = Framework(WORKFLOW_FRAMEWORK, "built-in workflow framework", 0)
    return st


# ---------------------------------------------------------------------------------------------- helpers


def _tick(st: State, now: int) -> int:
    if now > st.clock:
        st.clock = now
    return st.clock


def _check_term(st: State, term: int) -> None:
    if term != st.leader_term:
        raise Reject("stale_term", f"term {term} is not the current leader term {st.leader_term}")


def _event(job: Job, idx: int, t: int, kind: str, task: str = "", attempt: str = "", detail: str = "") -> None:
    job.events.append([idx, t, kind, task, attempt, detail])


def _job_state(st: State, job: Job, new: JobState, idx: int, t: int, message: str = "") -> None:
    if job.state == new:
        return
    job.state = new
    if new in JOB_TERMINAL:
        job.finished_at = t
        job.message = message
        for name in job.tasks:
            st.runnable.pop((job.id, name), None)
    _event(job, idx, t, "job_" + str(new), detail=message)


def _make_runnable(st: State, job: Job, task: Task) -> None:
    if job.state not in JOB_TERMINAL and task.state == TaskState.PENDING and task.unfinished_deps == 0:
        st.runnable[(job.id, task.spec.name)] = None


def _request_kill(st: State, job: Job, reason: str) -> None:
    for task in job.tasks.values():
        if task.attempts:
            att = st.attempts[task.attempts[-1]]
            if att.state in ACTIVE and att.kill_reason is None:
                att.kill_reason = reason


def _end_attempt(
    st: State, att: Attempt, state: TaskState, exit_code: int | None, message: str, idx: int, t: int
) -> None:
    """Move a live attempt to a terminal state and decide what happens to its task and job."""
    agent = st.agents[att.agent_id]
    job = st.jobs[att.job_id]
    task = job.tasks[att.task]
    att.state = state
    att.exit_code = exit_code
    att.message = message[:MAX_MESSAGE]
    att.finished_at = t
    agent.used = agent.used - task.spec.resources
    agent.attempts.pop(att.id, None)
    _event(job, idx, t, _EVENT_NAME[state], att.task, att.id, att.message)

    if state == TaskState.FINISHED:
        if task.state != TaskState.FINISHED:
            job.unfinished -= 1
        task.state = TaskState.FINISHED
        for dep_name in job.dependents[task.spec.name]:
            dep = job.tasks[dep_name]
            dep.unfinished_deps -= 1
            _make_runnable(st, job, dep)
        if job.state not in JOB_TERMINAL and job.unfinished == 0:
            _job_state(st, job, JobState.COMPLETE, idx, t)
        return

    if job.state in JOB_TERMINAL:
        task.state = state
        return

    infrastructure = state == TaskState.LOST or (state == TaskState.KILLED and att.kill_reason is not None)
    if state == TaskState.KILLED and att.kill_reason is None:
        infrastructure = True  # killed by its agent shutting down: not the task's fault
    if infrastructure:
        task.losses += 1
        exhausted = task.losses > MAX_LOSSES
        delay = 0
    else:
        task.failures += 1
        exhausted = task.failures >= task.spec.max_attempts
        delay = min(task.spec.backoff_ms * (2 ** (task.failures - 1)), MAX_BACKOFF_MS)
    if att.agent_id not in task.avoid:
        task.avoid.append(att.agent_id)
    if exhausted:
        task.state = state
        detail = f"task {task.spec.name} {str(state).lower()} after {len(task.attempts)} attempt(s)"
        _job_state(st, job, JobState.FAILED, idx, t, detail)
        _request_kill(st, job, "job failed")
        return
    task.state = TaskState.PENDING
    task.eligible_at = t + delay
    _event(job, idx, t, "task_retry", task.spec.name, detail=f"eligible in {delay} ms")
    _make_runnable(st, job, task)


def _placement_problem(st: State, job_id: str, task_name: str, agent_id: str, t: int) -> str:
    job = st.jobs.get(job_id)
    if job is None:
        return "unknown job"
    if job.state in JOB_TERMINAL:
        return f"job is {job.state}"
    task = job.tasks.get(task_name)
    if task is None:
        return "unknown task"
    if (job_id, task_name) not in st.runnable:
        return f"task is {task.state} and not runnable"
    if job.spec.not_before_ms is not None and t < job.spec.not_before_ms:
        return "job's not_before is in the future"
    if t < task.eligible_at:
        return "task is backing off"
    agent = st.agents.get(agent_id)
    if agent is None:
        return "unknown agent"
    if agent.state != AgentState.ACTIVE:
        return f"agent is {agent.state}"
    spec = task.spec
    if spec.type is not None and spec.type not in agent.task_types:
        return f"agent does not run task type {spec.type}"
    for k, v in spec.constraints:
        if agent.attributes.get(k) != v:
            return f"agent attribute {k} != {v}"
    if not spec.resources.fits_in(agent.free()):
        return "resources do not fit"
    return ""


def _valid_id(value: str, what: str) -> None:
    if not NAME_RE.match(value) or "/" in value:
        raise Reject("invalid", f"{what} {value!r} must match {NAME_RE.pattern}")


# ---------------------------------------------------------------------------------------------- handlers


def leader_elected(st: State, cmd: LeaderElected, idx: int) -> Any:
    if cmd.term <= st.leader_term:
        raise Reject("stale_term", f"term {cmd.term} is not newer than {st.leader_term}")
    _valid_id(cmd.node_id, "node id")
    _tick(st, cmd.now)
    st.leader_term = cmd.term
    st.leader_id = cmd.node_id
    return {"term": cmd.term}


def register_framework(st: State, cmd: RegisterFramework, idx: int) -> Any:
    _valid_id(cmd.framework_id, "framework id")
    t = _tick(st, cmd.now)
    if cmd.framework_id not in st.frameworks:
        st.frameworks[cmd.framework_id] = Framework(cmd.framework_id, cmd.name[:200], t)
    return {"framework_id": cmd.framework_id}


def register_agent(st: State, cmd: RegisterAgent, idx: int) -> Any:
    _valid_id(cmd.agent_id, "agent id")
    if not cmd.incarnation:
        raise Reject("invalid", "incarnation must not be empty")
    if min(cmd.cpus_m, cmd.mem_mb, cmd.disk_mb) < 0:
        raise Reject("invalid", "agent resources must not be negative")
    t = _tick(st, cmd.now)
    total = Resources(cmd.cpus_m, cmd.mem_mb, cmd.disk_mb)
    agent = st.agents.get(cmd.agent_id)
    reconciled: list[str] = []
    if agent is None:
        agent = Agent(
            id=cmd.agent_id,
            incarnation=cmd.incarnation,
            total=total,
            task_types=tuple(cmd.task_types),
            attributes=dict(cmd.attributes),
            state=AgentState.ACTIVE,
            registered_at=t,
            last_heartbeat=t,
            heartbeats=1,
        )
        st.agents[agent.id] = agent
        return {"agent_id": agent.id, "lost": reconciled}
    if agent.incarnation != cmd.incarnation:
        # A new process: whatever the old one ran died with it (tasks never outlive their node).
        for att_id in list(agent.attempts):
            reconciled.append(att_id)
            _end_attempt(st, st.attempts[att_id], TaskState.LOST, None, "agent restarted", idx, t)
        agent.incarnation = cmd.incarnation
    agent.total = total
    agent.task_types = tuple(cmd.task_types)
    agent.attributes = dict(cmd.attributes)
    if agent.state == AgentState.UNREACHABLE:
        agent.state = AgentState.DRAINING if agent.drain_deadline is not None else AgentState.ACTIVE
    agent.last_heartbeat = t
    agent.heartbeats += 1
    return {"agent_id": agent.id, "lost": reconciled}


def _live_agent(st: State, agent_id: str, incarnation: str) -> Agent:
    agent = st.agents.get(agent_id)
    if agent is None:
        raise Reject("not_found", f"unknown agent {agent_id!r}")
    if agent.incarnation != incarnation:
        raise Reject("stale_incarnation", f"agent {agent_id} has re-registered since")
    return agent


def _beat(agent: Agent, t: int) -> None:
    if agent.state == AgentState.UNREACHABLE:
        agent.state = AgentState.DRAINING if agent.drain_deadline is not None else AgentState.ACTIVE
    agent.last_heartbeat = t
    agent.heartbeats += 1


def heartbeat(st: State, cmd: Heartbeat, idx: int) -> Any:
    agent = _live_agent(st, cmd.agent_id, cmd.incarnation)
    _beat(agent, _tick(st, cmd.now))
    return {"heartbeats": agent.heartbeats}


def submit_job(st: State, cmd: SubmitJob, idx: int) -> Any:
    existing = st.requests.get(cmd.request_id)
    if existing is not None:
        return {"job_id": existing, "duplicate": True}
    if not cmd.request_id or len(cmd.request_id) > 200:
        raise Reject("invalid", "request id must be 1-200 characters")
    _valid_id(cmd.job_id, "job id")
    if cmd.job_id in st.jobs:
        raise Reject("conflict", f"job {cmd.job_id} already exists")
    if cmd.framework_id not in st.frameworks:
        raise Reject("not_found", f"unknown framework {cmd.framework_id!r}")
    try:
        spec = parse_job(cmd.spec)
    except SpecError as e:
        raise Reject("invalid", str(e)) from None
    t = _tick(st, cmd.now)
    st.job_seq += 1
    job = Job(cmd.job_id, cmd.request_id, cmd.framework_id, spec, st.job_seq, t)
    job.tasks = {ts.name: Task(ts) for ts in spec.tasks}
    job.build_dependents()
    st.jobs[job.id] = job
    st.requests[cmd.request_id] = job.id
    _event(job, idx, t, "job_submitted", detail=f"{len(job.tasks)} task(s)")
    for task in job.tasks.values():
        _make_runnable(st, job, task)
    return {"job_id": job.id, "duplicate": False}


def cancel_job(st: State, cmd: CancelJob, idx: int) -> Any:
    job = st.jobs.get(cmd.job_id)
    if job is None:
        raise Reject("not_found", f"unknown job {cmd.job_id!r}")
    if job.state in JOB_TERMINAL:
        return {"job_id": job.id, "state": str(job.state), "changed": False}
    t = _tick(st, cmd.now)
    reason = cmd.reason[:200] or "cancelled"
    _job_state(st, job, JobState.CANCELLED, idx, t, reason)
    for task in job.tasks.values():
        if task.state == TaskState.PENDING:
            task.state = TaskState.KILLED
    _request_kill(st, job, "job cancelled")
    return {"job_id": job.id, "state": str(job.state), "changed": True}


def launch(st: State, cmd: Launch, idx: int) -> Any:
    _check_term(st, cmd.term)
    for p in cmd.placements:
        if len(p) != 3:
            raise Reject("invalid", "each placement is [job_id, task, agent_id]")
    t = _tick(st, cmd.now)
    launched: list[str] = []
    refused: list[list[str]] = []
    for job_id, task_name, agent_id in cmd.placements:
        problem = _placement_problem(st, job_id, task_name, agent_id, t)
        if problem:
            refused.append([job_id, task_name, agent_id, problem])
            continue
        job = st.jobs[job_id]
        task = job.tasks[task_name]
        agent = st.agents[agent_id]
        number = len(task.attempts) + 1
        att = Attempt(
            id=attempt_id_for(job_id, task_name, number),
            job_id=job_id,
            task=task_name,
            number=number,
            agent_id=agent_id,
            state=TaskState.STAGING,
            term=cmd.term,
            launched_at=t,
        )
        st.attempts[att.id] = att
        agent.used = agent.used + task.spec.resources
        agent.attempts[att.id] = None
        task.state = TaskState.STAGING
        task.attempts.append(att.id)
        del st.runnable[(job_id, task_name)]
        if job.state == JobState.PENDING:
            _job_state(st, job, JobState.RUNNING, idx, t)
        _event(job, idx, t, "attempt_launched", task_name, att.id, agent_id)
        launched.append(att.id)
    return {"launched": launched, "refused": refused}


def status_update(st: State, cmd: StatusUpdate, idx: int) -> Any:
    agent = _live_agent(st, cmd.agent_id, cmd.incarnation)
    parsed: list[tuple[str, TaskState, int | None, str]] = []
    for u in cmd.updates:
        if len(u) != 4:
            raise Reject("invalid", "each update is [attempt_id, state, exit_code|null, message]")
        att_id, name, code, message = u
        reported = _REPORTABLE.get(name) if isinstance(name, str) else None
        if (
            reported is None
            or not isinstance(att_id, str)
            or not (code is None or (isinstance(code, int) and not isinstance(code, bool)))
            or not isinstance(message, str)
        ):
            raise Reject(
                "invalid",
                "each update is [attempt_id, STARTING|RUNNING|FINISHED|FAILED|KILLED|LOST, exit_code|null, message]",
            )
        parsed.append((att_id, reported, code, message))
    t = _tick(st, cmd.now)
    _beat(agent, t)
    applied: list[str] = []
    ignored: list[str] = []
    for att_id, state, exit_code, message in parsed:
        att = st.attempts.get(att_id)
        if att is None or att.agent_id != agent.id or att.state not in ACTIVE:
            ignored.append(att_id)  # unknown, someone else's, or superseded: a late update changes nothing
            continue
        if state in ACTIVE:
            if LIVE_ORDER[state] <= LIVE_ORDER[att.state]:
                ignored.append(att_id)
                continue
            att.state = state
            job = st.jobs[att.job_id]
            job.tasks[att.task].state = state
            if state == TaskState.RUNNING:
                att.started_at = t
            _event(job, idx, t, _EVENT_NAME[state], att.task, att.id)
        else:
            if att.started_at is None and state == TaskState.FINISHED:
                att.started_at = t
            _end_attempt(st, att, state, exit_code, message, idx, t)
        applied.append(att_id)
    return {"applied": applied, "ignored": ignored}


def agent_lost(st: State, cmd: AgentLost, idx: int) -> Any:
    _check_term(st, cmd.term)
    for entry in cmd.agents:
        if len(entry) != 2 or not isinstance(entry[0], str) or not isinstance(entry[1], int):
            raise Reject("invalid", "each agent is [agent_id, heartbeats]")
        if entry[0] not in st.agents:
            raise Reject("not_found", f"unknown agent {entry[0]!r}")
    t = _tick(st, cmd.now)
    lost: list[str] = []
    spared: list[str] = []
    for agent_id, heartbeats in cmd.agents:
        agent = st.agents[agent_id]
        if agent.state == AgentState.UNREACHABLE:
            continue
        if agent.heartbeats != heartbeats:
            spared.append(agent_id)  # it was heard from after the leader decided
            continue
        agent.state = AgentState.UNREACHABLE
        for att_id in list(agent.attempts):
            lost.append(att_id)
            _end_attempt(st, st.attempts[att_id], TaskState.LOST, None, cmd.reason[:200], idx, t)
    return {"lost": lost, "spared": spared}


def drain_agent(st: State, cmd: DrainAgent, idx: int) -> Any:
    agent = st.agents.get(cmd.agent_id)
    if agent is None:
        raise Reject("not_found", f"unknown agent {cmd.agent_id!r}")
    if cmd.deadline_ms < -1:
        raise Reject("invalid", "deadline must not be negative (-1 ends a drain)")
    _tick(st, cmd.now)
    if cmd.deadline_ms == -1:
        agent.drain_deadline = None
        if agent.state == AgentState.DRAINING:
            agent.state = AgentState.ACTIVE
        return {"agent_id": agent.id, "state": str(agent.state), "running": list(agent.attempts)}
    agent.drain_deadline = cmd.deadline_ms
    if agent.state == AgentState.ACTIVE:
        agent.state = AgentState.DRAINING
    return {"agent_id": agent.id, "state": str(agent.state), "running": list(agent.attempts)}


def kill_attempts(st: State, cmd: KillAttempts, idx: int) -> Any:
    _check_term(st, cmd.term)
    t = _tick(st, cmd.now)
    marked: list[str] = []
    for att_id in cmd.attempt_ids:
        att = st.attempts.get(att_id)
        if att is not None and att.state in ACTIVE and att.kill_reason is None:
            att.kill_reason = cmd.reason[:200] or "killed"
            _event(st.jobs[att.job_id], idx, t, "kill_requested", att.task, att.id, att.kill_reason)
            marked.append(att_id)
    return {"marked": marked}


def retry_job(st: State, cmd: RetryJob, idx: int) -> Any:
    existing = st.requests.get(cmd.request_id)
    if existing is not None:
        return {"job_id": existing, "duplicate": True}
    job = st.jobs.get(cmd.job_id)
    if job is None:
        raise Reject("not_found", f"unknown job {cmd.job_id!r}")
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        raise Reject("conflict", f"only a failed or cancelled job can be retried; this one is {job.state}")
    busy = [t.attempts[-1] for t in job.tasks.values() if t.attempts and st.attempts[t.attempts[-1]].state in ACTIVE]
    if busy:
        raise Reject("conflict", f"{len(busy)} attempt(s) are still being stopped; retry shortly")
    t = _tick(st, cmd.now)
    st.requests[cmd.request_id] = job.id
    job.retry_keys.append(cmd.request_id)
    rerun = 0
    for task in job.tasks.values():
        if task.state != TaskState.FINISHED:
            task.state = TaskState.PENDING
            task.failures = 0
            task.losses = 0
            task.eligible_at = 0
            rerun += 1
    job.finished_at = None
    job.message = ""
    done = any(x.state == TaskState.FINISHED for x in job.tasks.values())
    job.state = JobState.RUNNING if done else JobState.PENDING
    _event(job, idx, t, "job_retried", detail=f"{rerun} unfinished task(s) re-run")
    job.build_dependents()
    for task in job.tasks.values():
        _make_runnable(st, job, task)
    return {"job_id": job.id, "duplicate": False, "rerun": rerun}


def purge_jobs(st: State, cmd: PurgeJobs, idx: int) -> Any:
    _check_term(st, cmd.term)
    _tick(st, cmd.now)
    purged: list[str] = []
    for job_id in cmd.job_ids:
        job = st.jobs.get(job_id)
        if job is None or job.state not in JOB_TERMINAL:
            continue
        attempts = [a for t in job.tasks.values() for a in t.attempts]
        if any(st.attempts[a].state in ACTIVE for a in attempts):
            continue  # still being stopped: its resources are in use
        for a in attempts:
            del st.attempts[a]
        for key in (job.request_id, *job.retry_keys):
            if st.requests.get(key) == job_id:
                del st.requests[key]
        del st.jobs[job_id]
        purged.append(job_id)
    return {"purged": purged}


HANDLERS: dict[type[Any], Callable[[State, Any, int], Any]] = {
    LeaderElected: leader_elected,
    RegisterFramework: register_framework,
    RegisterAgent: register_agent,
    Heartbeat: heartbeat,
    SubmitJob: submit_job,
    CancelJob: cancel_job,
    Launch: launch,
    StatusUpdate: status_update,
    AgentLost: agent_lost,
    DrainAgent: drain_agent,
    RetryJob: retry_job,
    KillAttempts: kill_attempts,
    PurgeJobs: purge_jobs,
}


class Machine:
    """The replicated state machine: bytes in, :class:`Result` out. Owned by exactly one backend."""

    def __init__(self) -> None:
        self.state = initial_state()
        self.on_applied: Callable[[Command | None, Result], None] | None = None

    def apply(self, data: bytes) -> Result:
        """Apply one log entry. A ``Batch`` entry's value is the list of its commands' results."""
        st = self.state
        st.applied += 1
        idx = st.applied
        cmd: Command | None = None
        try:
            cmd = decode(data)
        except DecodeError as e:
            result = Result(idx, False, e.code, str(e))
        else:
            if isinstance(cmd, Batch):
                result = Result(idx, True, value=[self._apply_one(sub, idx, nested=True) for sub in cmd.entries])
            else:
                result = self._dispatch(cmd, idx)
        if self.on_applied is not None:
            self.on_applied(cmd, result)
        return result

    def _apply_one(self, data: bytes, idx: int, nested: bool) -> Result:
        try:
            cmd = decode(data)
        except DecodeError as e:
            return Result(idx, False, e.code, str(e))
        if nested and isinstance(cmd, Batch):
            return Result(idx, False, "invalid", "a batch cannot contain a batch")
        return self._dispatch(cmd, idx)

    def _dispatch(self, cmd: Command, idx: int) -> Result:
        try:
            return Result(idx, True, value=HANDLERS[type(cmd)](self.state, cmd, idx))
        except Reject as r:
            return Result(idx, False, r.code, r.message)
        except Exception as e:  # a handler bug: deterministic on every replica, so report it, never diverge
            return Result(idx, False, "internal_error", f"{type(e).__name__}: {e}")

    def apply_command(self, cmd: Command) -> Result:
        return self.apply(encode(cmd))

    def snapshot(self) -> bytes:
        return self.state.to_bytes()

    def restore(self, data: bytes) -> None:
        self.state = State.from_bytes(data)

    def digest(self) -> str:
        return self.state.digest()
