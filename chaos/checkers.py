"""Checkers over a recorded history and the final cluster state (pure functions).

Task records
------------
Every task attempt runs ``chaos/task.py``, which appends JSON lines to its own file: ``start`` (with its
attempt id, agent id, job id, task name, cpus, mem and pid), a ``tick`` every ``tick_s`` while it runs,
``term`` if it receives SIGTERM, and ``end`` when it finishes. All times are ``time.time()`` of the one
machine clock, read by a process that runs without libfaketime, so records from every node compare directly.

What "running" means, and how a killed attempt ends
---------------------------------------------------
A record at time *t* proves that the attempt's process executed at *t*. Between two consecutive records
less than ``max_gap_s`` apart we count the process as executing throughout; a longer gap means it was
stopped (SIGSTOP of its node) or starved, and we do not claim it executed there. An attempt that was killed
has a ``start`` but no ``end``: its execution ends at its **last record**, the last instant it is known to
have been alive. The moment it was actually observed dead (the harness's SIGKILL of the node's process tree,
or the agent's kill) is later by at most one tick, or by the length of a pause. Using the last record
makes the overlap check sound: every overlap it reports really happened (two records, or a record inside a
window of the other attempt's records, at the same instants). It can miss an overlap shorter than one tick.
The looser interval ``[start, observed dead]`` (``dead_at`` from the harness's kill events, else the last
record) is reported as *possible* overlap in the warnings, never as a violation: a process that existed but
was stopped does not run.

The resource check uses the same known-alive intervals ``[first record, last record]`` (a stopped process
still holds its memory, so pauses are not removed there).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.history import FAIL, INFO, OK, Submission

TERMINAL = frozenset({"complete", "failed", "cancelled"})
EPS = 1e-6


@dataclass(frozen=True)
class Violation:
    kind: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "detail": self.detail}


@dataclass(frozen=True)
class Attempt:
    attempt_id: str
    agent_id: str
    job_id: str
    task_name: str
    cpus: float
    mem_mb: float
    pid: int
    times: tuple[float, ...]
    ended: bool = False
    dead_at: float | None = None

    @property
    def start(self) -> float:
        return self.times[0]

    @property
    def last(self) -> float:
        return self.times[-1]

    @property
    def task_key(self) -> tuple[str, str]:
        return (self.job_id, self.task_name)


def parse_attempt(lines: Iterable[str]) -> Attempt | None:
    """One attempt from its record file; None if it never wrote a valid ``start``."""
    head: dict[str, Any] | None = None
    times: list[float] = []
    ended = False
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by SIGKILL
        if not isinstance(rec, dict) or "t" not in rec:
            continue
        if rec.get("ev") == "start":
            head = rec
        if rec.get("ev") == "end":
            ended = True
        times.append(float(rec["t"]))
    if head is None or not times:
        return None
    return Attempt(
        attempt_id=str(head.get("attempt", "")),
        agent_id=str(head.get("agent", "")),
        job_id=str(head.get("job", "")),
        task_name=str(head.get("task", "")),
        cpus=float(head.get("cpus", 0.0)),
        mem_mb=float(head.get("mem", 0.0)),
        pid=int(head.get("pid", 0)),
        times=tuple(sorted(times)),
        ended=ended,
    )


def load_attempts(directory: Path, kills: Mapping[int, float] | None = None) -> list[Attempt]:
    """Every attempt recorded under ``directory``; ``kills`` maps a pid to when the harness SIGKILLed it."""
    out: list[Attempt] = []
    for p in sorted(directory.glob("*.jsonl")):
        a = parse_attempt(p.read_text(encoding="utf-8", errors="replace").splitlines())
        if a is None:
            continue
        if kills and a.pid in kills and not a.ended:
            a = Attempt(**{**a.__dict__, "dead_at": max(kills[a.pid], a.last)})
        out.append(a)
    return out


def executing_segments(times: Sequence[float], max_gap_s: float) -> list[tuple[float, float]]:
    """Windows in which the process provably ran: records closer than ``max_gap_s`` are joined."""
    segs: list[tuple[float, float]] = []
    for t in sorted(times):
        if segs and t - segs[-1][1] <= max_gap_s:
            segs[-1] = (segs[-1][0], t)
        else:
            segs.append((t, t))
    return segs


def _intersections(
    a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s1, e1 in a:
        for s2, e2 in b:
            lo, hi = max(s1, s2), min(e1, e2)
            if lo <= hi:
                out.append((lo, hi))
    return out


def check_overlaps(
    attempts: Sequence[Attempt], max_gap_s: float = 2.0
) -> tuple[list[Violation], list[Violation]]:
    """No two attempts of one task executed at the same instant. Returns (violations, warnings)."""
    by_task: dict[tuple[str, str], list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_task[a.task_key].append(a)
    violations: list[Violation] = []
    warnings: list[Violation] = []
    for (job, task), group in sorted(by_task.items()):
        group = sorted(group, key=lambda x: x.start)
        segs = {a.attempt_id + f"#{a.pid}": executing_segments(a.times, max_gap_s) for a in group}
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                ka, kb = a.attempt_id + f"#{a.pid}", b.attempt_id + f"#{b.pid}"
                both = _intersections(segs[ka], segs[kb])
                detail = {
                    "job": job,
                    "task": task,
                    "a": {"attempt": a.attempt_id, "agent": a.agent_id, "pid": a.pid,
                          "start": a.start, "last": a.last, "ended": a.ended},
                    "b": {"attempt": b.attempt_id, "agent": b.agent_id, "pid": b.pid,
                          "start": b.start, "last": b.last, "ended": b.ended},
                }
                if both:
                    total = sum(hi - lo for lo, hi in both)
                    violations.append(
                        Violation(
                            "overlap",
                            f"{job}/{task}: attempts {a.attempt_id}@{a.agent_id} and {b.attempt_id}@{b.agent_id} "
                            f"executed at the same time ({total:.3f}s over {len(both)} window(s), "
                            f"from {both[0][0]:.3f})",
                            {**detail, "windows": both, "overlap_s": total},
                        )
                    )
                    continue
                a_end = a.dead_at if a.dead_at is not None else a.last
                b_end = b.dead_at if b.dead_at is not None else b.last
                lo, hi = max(a.start, b.start), min(a_end, b_end)
                if lo <= hi:
                    warnings.append(
                        Violation(
                            "possible-overlap",
                            f"{job}/{task}: attempts {a.attempt_id} and {b.attempt_id} both existed during "
                            f"[{lo:.3f}, {hi:.3f}] but records show no simultaneous execution",
                            {**detail, "window": [lo, hi]},
                        )
                    )
    return violations, warnings


def check_resources(
    attempts: Sequence[Attempt], totals: Mapping[str, tuple[float, float]]
) -> tuple[list[Violation], list[Violation]]:
    """No agent held more cpus or memory than it has, at any instant (known-alive intervals).

    ``totals`` maps an agent id to its (cpus, mem_mb). Returns (violations, warnings); attempts on agents
    missing from ``totals`` become warnings.
    """
    violations: list[Violation] = []
    warnings: list[Violation] = []
    by_agent: dict[str, list[Attempt]] = defaultdict(list)
    for a in attempts:
        by_agent[a.agent_id].append(a)
    for agent, group in sorted(by_agent.items()):
        if agent not in totals:
            warnings.append(
                Violation("unknown-agent", f"{len(group)} attempt(s) ran on unknown agent {agent!r}")
            )
            continue
        cpus_total, mem_total = totals[agent]
        events: list[tuple[float, int, Attempt]] = []
        for a in group:
            events.append((a.start, 1, a))
            events.append((a.last, 0, a))  # ends sort before starts at the same instant
        events.sort(key=lambda e: (e[0], e[1]))
        alive: dict[str, Attempt] = {}
        reported = False
        for t, kind, a in events:
            key = f"{a.attempt_id}#{a.pid}"
            if kind == 0:
                alive.pop(key, None)
                continue
            alive[key] = a
            cpus = sum(x.cpus for x in alive.values())
            mem = sum(x.mem_mb for x in alive.values())
            if (cpus > cpus_total + EPS or mem > mem_total + EPS) and not reported:
                reported = True  # one violation per agent; the detail lists the first instant
                violations.append(
                    Violation(
                        "oversubscribed",
                        f"agent {agent} ran {cpus:g}/{cpus_total:g} cpus, {mem:g}/{mem_total:g} MB at {t:.3f}",
                        {
                            "agent": agent,
                            "t": t,
                            "cpus": cpus,
                            "mem_mb": mem,
                            "total": [cpus_total, mem_total],
                            "attempts": sorted(
                                f"{x.job_id}/{x.task_name}/{x.attempt_id}" for x in alive.values()
                            ),
                        },
                    )
                )
    return violations, warnings


def check_acknowledged(
    subs: Mapping[str, Submission], final_jobs: Sequence[Mapping[str, Any]], bound_s: float
) -> list[Violation]:
    """Every acknowledged job exists at the end and is terminal (the final listing was taken ``bound_s``
    after the final heal at the latest)."""
    by_id = {str(j.get("id")): j for j in final_jobs}
    out: list[Violation] = []
    for name, sub in sorted(subs.items()):
        if sub.outcome != OK:
            continue
        if len(sub.ids) > 1:
            out.append(
                Violation(
                    "ack-id-mismatch",
                    f"{name}: one Idempotency-Key was acknowledged with different ids {sorted(sub.ids)}",
                    {"name": name, "key": sub.key, "ids": sorted(sub.ids)},
                )
            )
        for job_id in sorted(sub.ids):
            job = by_id.get(job_id)
            if job is None:
                out.append(
                    Violation("lost", f"acknowledged job {name} ({job_id}) is missing at the end",
                              {"name": name, "id": job_id})
                )
            elif str(job.get("state")) not in TERMINAL:
                out.append(
                    Violation(
                        "not-terminal",
                        f"acknowledged job {name} ({job_id}) is still {job.get('state')!r} "
                        f"{bound_s:g}s after the final heal",
                        {"name": name, "id": job_id, "state": job.get("state")},
                    )
                )
    return out


def check_duplicates(
    subs: Mapping[str, Submission], final_jobs: Sequence[Mapping[str, Any]]
) -> tuple[list[Violation], dict[str, int]]:
    """Each submission took effect at most once; a definitely-failed one not at all.

    Returns (violations, stats) where stats counts the unknown submissions found present and absent.
    """
    count: dict[str, int] = defaultdict(int)
    for j in final_jobs:
        count[str(j.get("name"))] += 1
    out: list[Violation] = []
    stats = {"unknown_present": 0, "unknown_absent": 0}
    for name, sub in sorted(subs.items()):
        n = count.get(name, 0)
        if sub.outcome == INFO:
            stats["unknown_present" if n else "unknown_absent"] += 1
        if n > 1:
            out.append(
                Violation(
                    "duplicate",
                    f"submission {name} (outcome {sub.outcome}, {sub.requests} request(s) with key {sub.key}) "
                    f"appears {n} times",
                    {"name": name, "key": sub.key, "count": n, "outcome": sub.outcome},
                )
            )
        elif n == 1 and sub.outcome == FAIL:
            out.append(
                Violation(
                    "failed-but-present",
                    f"submission {name} was refused ({sub.requests} request(s)) but the job exists",
                    {"name": name, "key": sub.key},
                )
            )
    return out, stats


@dataclass(frozen=True)
class StatusSample:
    t: float
    round: int
    node: str
    applied_index: int
    digest: str
    leader_id: str | None = None
    role: str | None = None


def check_replicas(
    samples: Sequence[StatusSample], nodes: Sequence[str]
) -> tuple[list[Violation], dict[str, Any]]:
    """Same applied index implies same digest, everywhere; and all nodes were once seen at one index.

    Returns (violations, info) where info names the index all nodes agreed on (or None).
    """
    out: list[Violation] = []
    seen: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for s in samples:
        seen[s.applied_index][s.digest].add(s.node)
    for idx in sorted(seen):
        if len(seen[idx]) > 1:
            out.append(
                Violation(
                    "divergent",
                    f"applied_index {idx} has {len(seen[idx])} different digests",
                    {"index": idx, "digests": {d: sorted(ns) for d, ns in seen[idx].items()}},
                )
            )
    rounds: dict[int, list[StatusSample]] = defaultdict(list)
    for s in samples:
        rounds[s.round].append(s)
    agreed: dict[str, Any] | None = None
    for r in sorted(rounds):
        group = rounds[r]
        if {s.node for s in group} >= set(nodes) and len({(s.applied_index, s.digest) for s in group}) == 1:
            agreed = {"round": r, "index": group[0].applied_index, "digest": group[0].digest, "t": group[0].t}
    if agreed is None:
        out.append(
            Violation(
                "not-converged",
                f"never saw all of {list(nodes)} at one applied_index with one digest "
                f"({len(rounds)} polling round(s))",
                {"rounds": len(rounds)},
            )
        )
    return out, {"agreed": agreed}


def check_recovery(recovery_s: float | None, bound_s: float, what: str = "leader agreement") -> list[Violation]:
    if recovery_s is None:
        return [Violation("no-recovery", f"no {what} within {bound_s:g}s after the final heal", {})]
    return []


def leader_agreement(samples: Sequence[StatusSample], nodes: Sequence[str]) -> str | None:
    """The leader id if every node in ``nodes`` reported the same non-null leader, and that node leads."""
    got = {s.node: s for s in samples}
    if set(got) < set(nodes):
        return None
    leaders = {got[n].leader_id for n in nodes}
    if len(leaders) != 1:
        return None
    leader = leaders.pop()
    if leader is None or leader not in got or got[leader].role != "leader":
        return None
    if sum(1 for n in nodes if got[n].role == "leader") != 1:
        return None
    return leader


LOG_PATTERNS = (" CRITICAL ", "Traceback (most recent call last)", " ERROR ")


def scan_node_logs(log_dir: Path, limit: int = 5) -> list[Violation]:
    """Warnings for CRITICAL/ERROR lines and tracebacks in the nodes' logs, grouped by message."""
    import re

    out: list[Violation] = []
    for p in sorted(log_dir.glob("*.log")):
        groups: dict[str, list[str]] = defaultdict(list)
        try:
            lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if any(pat in line for pat in LOG_PATTERNS):
                body = line.split(" ", 3)[-1] if line[:4].isdigit() else line
                shape = re.sub(r"\d+", "N", body)[:160]
                groups[shape].append(line[:300])
        for shape, hits in groups.items():
            out.append(
                Violation(
                    "node-log",
                    f"{p.stem}: {len(hits)} x {hits[0][:240]}",
                    {"node": p.stem, "count": len(hits), "shape": shape, "examples": hits[:limit]},
                )
            )
    return out
