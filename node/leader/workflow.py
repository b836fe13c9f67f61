"""The built-in workflow framework: the Airavata orchestrator's role.

Given offers and the replicated state, it places ready DAG tasks: URGENT before NORMAL, higher
``priority_value`` first, then submission order; a retried task prefers an agent it has not failed on; it spreads
load by picking the offer with the most free CPU. Pure: it only reads ``State`` and returns decisions.

The choice for each task is: among the offers whose agent fits the task (type, constraints) and whose remaining
resources hold it, the one with the most remaining CPU (first offer on a tie), preferring agents the task has not
failed on. The offers a task's type and constraints allow are kept in a max-heap on remaining CPU, so a placement
costs O(log offers) rather than a scan of every offer; once a (type, constraints, resources) shape finds nothing
in a round it is skipped for the rest of that round (remaining resources only shrink within a round).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

from consensus.apply import WORKFLOW_FRAMEWORK
from consensus.spec import Resources, TaskSpec
from consensus.state import JOB_TERMINAL, Agent, Job, State
from node.leader.allocator import Offer

MAX_PLACEMENTS_PER_ROUND = 20_000
WALK_JOBS_ABOVE = 4  # walk jobs rather than runnable entries when runnable > this many per job

_Shape = tuple[str | None, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: str
    task: str
    agent_id: str
    offer_id: str
    resources: Resources


def _job_key(job: Job) -> tuple[int, int, int]:
    return (job.spec.priority_class, -job.spec.priority_value, job.seq)


def _job_ready(job: Job, now_ms: int) -> bool:
    if job.framework_id != WORKFLOW_FRAMEWORK or job.state in JOB_TERMINAL:
        return False
    return job.spec.not_before_ms is None or job.spec.not_before_ms <= now_ms


def _ready_jobs(state: State, now_ms: int) -> list[tuple[Job, list[str] | None]]:
    """Jobs that may have ready tasks, in scheduling order, each with its runnable task names in spec order
    (``None``: walk the job's tasks and test each against ``state.runnable``).

    Runnable tasks whose start time has come, grouped by job. With many runnable tasks it walks jobs instead of every
    runnable entry, so a round that stops early (enough placements, or no capacity left) never touches the rest.
    """
    if len(state.runnable) <= WALK_JOBS_ABOVE * len(state.jobs):
        groups: dict[str, list[str]] = {}
        for job_id, task_name in state.runnable:
            g = groups.get(job_id)
            if g is None:
                g = groups[job_id] = []
            g.append(task_name)
        out: list[tuple[Job, list[str] | None]] = []
        for job_id, names in groups.items():
            job = state.jobs[job_id]
            if not _job_ready(job, now_ms):
                continue
            if len(names) > 1:
                order = {t.name: i for i, t in enumerate(job.spec.tasks)}
                names.sort(key=order.__getitem__)
            out.append((job, names))
        out.sort(key=lambda jn: _job_key(jn[0]))
        return out
    jobs = [j for j in state.jobs.values() if _job_ready(j, now_ms)]
    jobs.sort(key=_job_key)
    return [(j, None) for j in jobs]


_SHAPES: dict[str, tuple[object, frozenset[tuple[_Shape, Resources]]]] = {}


def _job_shapes(job: Job) -> frozenset[tuple[_Shape, Resources]]:
    """The distinct (type, constraints, resources) of a job's tasks; cached per job while its spec is the same."""
    hit = _SHAPES.get(job.id)
    if hit is not None and hit[0] is job.spec:
        return hit[1]
    shapes = frozenset(((t.type, t.constraints), t.resources) for t in job.spec.tasks)
    if len(_SHAPES) > 100_000:
        _SHAPES.clear()
    _SHAPES[job.id] = (job.spec, shapes)
    return shapes


def _ready_in_order(state: State, now_ms: int, dead: set[tuple[_Shape, Resources]]) -> Iterator[tuple[Job, str]]:
    runnable = state.runnable
    for job, names in _ready_jobs(state, now_ms):
        if dead and _job_shapes(job) <= dead:
            continue  # nothing this job could need fits anywhere any more this round
        tasks = job.tasks
        if names is None:
            jid = job.id
            names = [t.name for t in job.spec.tasks if (jid, t.name) in runnable]
        for name in names:
            if tasks[name].eligible_at > now_ms:
                continue
            yield job, name


def agent_fits(agent: Agent, spec: TaskSpec) -> bool:
    if spec.type is not None and spec.type not in agent.task_types:
        return False
    return all(agent.attributes.get(k) == v for k, v in spec.constraints)


def place(state: State, offers: list[Offer], now_ms: int) -> tuple[list[Placement], list[str]]:
    """Return (placements, offer ids to decline). Each offer used is consumed whole; leftovers are re-offered."""
    remaining = [o.resources for o in offers]
    agents = [state.agents.get(o.agent_id) for o in offers]
    placements: list[Placement] = []
    used: set[int] = set()
    heaps: dict[_Shape, list[tuple[int, int]]] = {}  # shape -> [(-remaining cpus, offer position)]
    dead: set[tuple[_Shape, Resources]] = set()

    def heap_for(shape: _Shape, spec: TaskSpec) -> list[tuple[int, int]]:
        h = heaps.get(shape)
        if h is None:
            h = [
                (-remaining[i].cpus_m, i)
                for i, agent in enumerate(agents)
                if agent is not None and agent_fits(agent, spec)
            ]
            heapq.heapify(h)
            heaps[shape] = h
        return h

    def best_by_heap(h: list[tuple[int, int]], need: Resources) -> int | None:
        """The fitting offer with the most remaining CPU, first position on a tie."""
        set_aside: list[tuple[int, int]] = []
        found: int | None = None
        while h:
            neg, i = h[0]
            free = remaining[i]
            if -neg != free.cpus_m:  # stale: this offer was used since; refresh and look again
                heapq.heapreplace(h, (-free.cpus_m, i))
                continue
            if free.cpus_m < need.cpus_m:
                break  # the most CPU left is not enough: nothing fits
            if need.mem_mb <= free.mem_mb and need.disk_mb <= free.disk_mb:
                found = i
                break
            set_aside.append(heapq.heappop(h))
        for item in set_aside:
            heapq.heappush(h, item)
        return found

    def best_by_scan(spec: TaskSpec, avoid: list[str]) -> int | None:
        need = spec.resources
        best: int | None = None
        best_score: tuple[int, int] | None = None
        for i, free in enumerate(remaining):
            if not need.fits_in(free):
                continue
            agent = agents[i]
            if agent is None or not agent_fits(agent, spec):
                continue
            score = (0 if offers[i].agent_id in avoid else 1, free.cpus_m)
            if best_score is None or score > best_score:
                best, best_score = i, score
        return best

    if offers:
        for job, task_name in _ready_in_order(state, now_ms, dead):
            if len(placements) >= MAX_PLACEMENTS_PER_ROUND:
                break
            task = job.tasks[task_name]
            spec = task.spec
            need = spec.resources
            shape: _Shape = (spec.type, spec.constraints)
            if task.avoid:
                best = best_by_scan(spec, task.avoid)
            else:
                if (shape, need) in dead:
                    continue
                best = best_by_heap(heap_for(shape, spec), need)
                if best is None:
                    dead.add((shape, need))
            if best is None:
                continue
            remaining[best] = remaining[best] - need
            used.add(best)
            offer = offers[best]
            placements.append(Placement(job.id, task_name, offer.agent_id, offer.id, need))
    declines = [o.id for i, o in enumerate(offers) if i not in used]
    return placements, declines
