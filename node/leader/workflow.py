"""The built-in workflow framework: the Airavata orchestrator's role.

Given offers and the replicated state, it places ready DAG tasks: URGENT before NORMAL, higher
``priority_value`` first, then submission order; a retried task prefers an agent it has not failed on; it spreads
load by picking the offer with the most free CPU. Pure: it only reads ``State`` and returns decisions.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.apply import WORKFLOW_FRAMEWORK
from consensus.spec import Resources, TaskSpec
from consensus.state import Agent, State
from node.leader.allocator import Offer

MAX_PLACEMENTS_PER_ROUND = 20_000


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    task: str
    agent_id: str
    offer_id: str
    resources: Resources


def ready_tasks(state: State, now_ms: int) -> list[tuple[tuple[int, int, int, int], str, str]]:
    """Runnable tasks whose start time has come, in scheduling order."""
    out = []
    order_cache: dict[str, dict[str, int]] = {}
    for job_id, task_name in state.runnable:
        job = state.jobs[job_id]
        if job.framework_id != WORKFLOW_FRAMEWORK:
            continue
        if job.spec.not_before_ms is not None and job.spec.not_before_ms > now_ms:
            continue
        task = job.tasks[task_name]
        if task.eligible_at > now_ms:
            continue
        order = order_cache.get(job_id)
        if order is None:
            order = order_cache[job_id] = {t.name: i for i, t in enumerate(job.spec.tasks)}
        key = (job.spec.priority_class, -job.spec.priority_value, job.seq, order[task_name])
        out.append((key, job_id, task_name))
    out.sort()
    return out


def agent_fits(agent: Agent, spec: TaskSpec) -> bool:
    if spec.type is not None and spec.type not in agent.task_types:
        return False
    return all(agent.attributes.get(k) == v for k, v in spec.constraints)


def place(state: State, offers: list[Offer], now_ms: int) -> tuple[list[Placement], list[str]]:
    """Return (placements, offer ids to decline). Each offer used is consumed whole; leftovers are re-offered."""
    remaining = {o.id: o.resources for o in offers}
    by_id = {o.id: o for o in offers}
    placements: list[Placement] = []
    used_offers: set[str] = set()
    if offers:
        for _key, job_id, task_name in ready_tasks(state, now_ms):
            if len(placements) >= MAX_PLACEMENTS_PER_ROUND:
                break
            task = state.jobs[job_id].tasks[task_name]
            need = task.spec.resources
            best: str | None = None
            best_score: tuple[int, int] | None = None
            for oid, free in remaining.items():
                if not need.fits_in(free):
                    continue
                offer = by_id[oid]
                agent = state.agents.get(offer.agent_id)
                if agent is None or not agent_fits(agent, task.spec):
                    continue
                score = (0 if offer.agent_id in task.avoid else 1, free.cpus_m)
                if best_score is None or score > best_score:
                    best, best_score = oid, score
            if best is None:
                continue
            remaining[best] = remaining[best] - need
            used_offers.add(best)
            placements.append(Placement(job_id, task_name, by_id[best].agent_id, best, need))
    declines = [o.id for o in offers if o.id not in used_offers]
    return placements, declines
