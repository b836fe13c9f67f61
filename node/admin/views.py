"""Replicated state rendered as the admin API's JSON. Pure functions of ``State``."""

from __future__ import annotations

from typing import Any

from consensus.state import Agent, Attempt, Job, State


def ms_to_s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def attempt_json(a: Attempt) -> dict[str, Any]:
    return {
        "id": a.id,
        "number": a.number,
        "agent_id": a.agent_id,
        "state": str(a.state),
        "exit_code": a.exit_code,
        "message": a.message,
        "launched_at": ms_to_s(a.launched_at),
        "started_at": ms_to_s(a.started_at),
        "finished_at": ms_to_s(a.finished_at),
        "term": a.term,
        "kill_reason": a.kill_reason,
    }


def job_summary(job: Job) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for t in job.tasks.values():
        counts[str(t.state)] = counts.get(str(t.state), 0) + 1
    return {
        "id": job.id,
        "name": job.spec.name,
        "state": str(job.state),
        "priority": "URGENT" if job.spec.priority_class == 0 else "NORMAL",
        "priority_value": job.spec.priority_value,
        "submitted_at": ms_to_s(job.submitted_at),
        "finished_at": ms_to_s(job.finished_at),
        "message": job.message,
        "task_states": counts,
    }


def job_json(st: State, job: Job) -> dict[str, Any]:
    out = job_summary(job)
    out["not_before"] = ms_to_s(job.spec.not_before_ms)
    out["framework_id"] = job.framework_id
    out["tasks"] = [
        {
            "name": t.spec.name,
            "type": t.spec.type,
            "state": str(t.state),
            "depends_on": list(t.spec.depends_on),
            "attempts": [attempt_json(st.attempts[a]) for a in t.attempts],
        }
        for t in job.tasks.values()
    ]
    return out


def events_json(job: Job) -> list[dict[str, Any]]:
    return [
        {
            "index": e[0],
            "time": ms_to_s(e[1]),
            "kind": e[2],
            "task": e[3] or None,
            "attempt": e[4] or None,
            "detail": e[5],
        }
        for e in job.events
    ]


def agent_json(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "state": str(agent.state),
        "incarnation": agent.incarnation,
        "total": agent.total.to_json(),
        "used": agent.used.to_json(),
        "task_types": list(agent.task_types),
        "attributes": agent.attributes,
        "running_attempts": list(agent.attempts),
        "last_heartbeat": ms_to_s(agent.last_heartbeat),
        "drain_deadline": ms_to_s(agent.drain_deadline),
    }
