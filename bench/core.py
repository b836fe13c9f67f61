"""1. The limit: the pure state machine alone, in this process, with no Raft, sockets or asyncio.

It applies, as bytes through ``Machine.apply``, what a cluster's log would hold for the same work: agents
register, jobs are submitted, ``Launch`` entries carry up to 20,000 placements each (round-robin over the
agents), and each agent's ``StatusUpdate`` reports its attempts of that round ``RUNNING`` then ``FINISHED``. Every
entry is encoded before the clock starts, so the rates are apply (decode + validate + mutate) only. The leader's
placement decision (allocator + workflow framework) is timed separately on the same state.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from bench.stats import progress
from consensus.apply import WORKFLOW_FRAMEWORK, Machine
from consensus.codec import encode
from consensus.commands import Launch, LeaderElected, RegisterAgent, StatusUpdate, SubmitJob
from consensus.state import State, attempt_id_for
from node.leader.allocator import Allocator
from node.leader.workflow import MAX_PLACEMENTS_PER_ROUND, place

TASK_RESOURCES = {"cpus": 0.01, "mem_mb": 1, "disk_mb": 0}
AGENT_CPUS_M = 10_000_000  # roomy enough that resources never bind: this measures the machine, not capacity


def bench_job(name: str, tasks: int, not_before: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "tasks": [{"name": f"t{i}", "command": ["true"], "resources": TASK_RESOURCES} for i in range(tasks)],
    }
    if not_before is not None:
        body["not_before"] = not_before
    return body


def run_core(agents: int, jobs: int, tasks_per_job: int) -> dict[str, Any]:
    n = jobs * tasks_per_job
    progress(f"core: {jobs} jobs x {tasks_per_job} tasks on {agents} agents ({n:,} placements)")
    m = Machine()
    now = 1_700_000_000_000
    m.apply(encode(LeaderElected(1, "n1", now)))
    agent_ids = [f"a{i:05d}" for i in range(agents)]
    for a in agent_ids:
        r = m.apply(encode(RegisterAgent(a, "inc", AGENT_CPUS_M, 10**9, 10**9, [], {}, now)))
        assert r.ok, r
    submits = [
        encode(SubmitJob(f"r{j}", f"j{j:05d}", WORKFLOW_FRAMEWORK, bench_job(f"j{j}", tasks_per_job), now))
        for j in range(jobs)
    ]
    submit_bytes = sum(len(s) for s in submits)
    gc.collect()
    t0 = time.perf_counter()
    for data in submits:
        r = m.apply(data)
        assert r.ok, r
    submit_s = time.perf_counter() - t0
    del submits

    # the leader's decision for the first round, on this state: allocate offers and place
    st = m.state
    alloc = Allocator(2.0)
    t0 = time.perf_counter()
    offers = alloc.allocate(st, [WORKFLOW_FRAMEWORK], 0.0)
    placed, _declines = place(st, offers, now)
    decide_s = time.perf_counter() - t0
    decide_n = len(placed)

    # encode the log of launches and status updates
    names = [(f"j{j:05d}", f"t{i}") for j in range(jobs) for i in range(tasks_per_job)]
    entries: list[tuple[str, bytes]] = []
    launch_bytes = status_bytes = 0
    for start in range(0, n, MAX_PLACEMENTS_PER_ROUND):
        chunk = names[start : start + MAX_PLACEMENTS_PER_ROUND]
        per_agent: dict[str, list[list[object]]] = {}
        placements = []
        for k, (job_id, task) in enumerate(chunk):
            agent = agent_ids[(start + k) % agents]
            placements.append([job_id, task, agent])
            att = attempt_id_for(job_id, task, 1)
            per_agent.setdefault(agent, []).extend([[att, "RUNNING", None, ""], [att, "FINISHED", 0, ""]])
        data = encode(Launch(1, now, placements))
        launch_bytes += len(data)
        entries.append(("launch", data))
        for agent, updates in per_agent.items():
            data = encode(StatusUpdate(agent, "inc", now, updates))
            status_bytes += len(data)
            entries.append(("status", data))
    del names
    gc.collect()
    launch_s = status_s = 0.0
    t_all = time.perf_counter()
    for kind, data in entries:
        t0 = time.perf_counter()
        r = m.apply(data)
        dt = time.perf_counter() - t0
        if kind == "launch":
            launch_s += dt
            assert r.ok and not r.value["refused"], (r.code, r.message, r.value and r.value["refused"][:1])
        else:
            status_s += dt
            assert r.ok and not r.value["ignored"], (r.code, r.message)
    total_s = time.perf_counter() - t_all
    n_entries = len(entries)
    del entries
    done = sum(1 for j in st.jobs.values() if str(j.state) == "complete")
    assert done == jobs, f"{done} of {jobs} jobs complete"

    t0 = time.perf_counter()
    snap = m.snapshot()
    snapshot_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = State.from_bytes(snap)
    restore_s = time.perf_counter() - t0
    assert restored.applied == st.applied
    del restored
    gc.collect()
    t0 = time.perf_counter()
    m.digest()
    digest_s = time.perf_counter() - t0
    out = {
        "agents": agents,
        "jobs": jobs,
        "tasks": n,
        "entries": n_entries,
        "placements_per_s": n / total_s,
        "launch_only_per_s": n / launch_s,
        "status_only_per_s": n / status_s,
        "apply_s": total_s,
        "submit_tasks_per_s": n / submit_s,
        "submit_s": submit_s,
        "leader_decide_placements": decide_n,
        "leader_decide_s": decide_s,
        "leader_decide_per_s": decide_n / decide_s if decide_s > 0 else 0.0,
        "log_bytes_per_task": (submit_bytes + launch_bytes + status_bytes) / n,
        "snapshot_bytes": len(snap),
        "state_bytes_per_task": len(snap) / n,
        "snapshot_s": snapshot_s,
        "restore_s": restore_s,
        "digest_s": digest_s,
    }
    progress(
        f"core: {out['placements_per_s']:,.0f} placements/s (launch {out['launch_only_per_s']:,.0f}/s, "
        f"status {out['status_only_per_s']:,.0f}/s); {out['state_bytes_per_task']:.0f} B/task replicated state"
    )
    return out
