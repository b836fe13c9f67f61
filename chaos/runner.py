"""One chaos run: start a cluster, run the workload and the fault schedule, heal, wait, check, report.

The harness's network I/O runs on an event loop in a dedicated thread (which, with the netns backend,
enters the run's client namespace); the main thread owns setup, teardown and signals.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import secrets
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos import PREFIX, checkers, report, sysutil
from chaos.api import Api
from chaos.checkers import StatusSample, Violation
from chaos.cluster import Cluster, ClusterOptions
from chaos.history import History, op_counts, submissions
from chaos.jobs import TaskCommand, long_job
from chaos.nemesis import Nemesis, find_leader
from chaos.net import Network, make_network
from chaos.schedule import NEEDS_NETNS, Fault, make_schedule, schedule_end
from chaos.workload import Client, WorkloadOptions, run_clients

CHAOS_DIR = Path(__file__).resolve().parent
TASK_SCRIPT = CHAOS_DIR / "task.py"
DEFAULT_RUNS = CHAOS_DIR / "runs"
TERMINAL = checkers.TERMINAL

Progress = Callable[[str], None]


@dataclass
class RunConfig:
    seed: int
    nemeses: list[str]
    nodes: int = 3
    backend: str = "netns"
    duration_s: float = 30.0
    clients: int = 2
    unsafe_no_fencing: bool = False
    scenario: str = "random"  # or "pause-lease"
    recovery_bound_s: float = 45.0
    terminal_bound_s: float = 90.0
    replica_bound_s: float = 20.0
    out_dir: Path = DEFAULT_RUNS
    keep: bool = False
    tmpfs_mb: int = 48
    timing: dict[str, float] = field(default_factory=dict)
    max_gap_s: float = 2.0
    pause_s: float = 12.0
    pause_scope: str = "node"  # pause-lease scenario: "node" (node process) or "tree" (node and its tasks)

    def replay_command(self) -> str:
        parts = [f"python -m chaos run --seed {self.seed}", f"--nodes {self.nodes}", f"--backend {self.backend}",
                 f"--duration {self.duration_s:g}"]
        if self.scenario != "random":
            parts.append(f"--scenario {self.scenario}")
            if self.pause_scope != "node":
                parts.append(f"--pause-scope {self.pause_scope}")
        else:
            parts.append(f"--nemesis {','.join(self.nemeses) or 'none'}")
        if self.unsafe_no_fencing:
            parts.append("--unsafe-no-fencing")
        return " ".join(parts)


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    config: RunConfig
    summary: dict[str, Any]
    violations: list[Violation]
    warnings: list[Violation]

    @property
    def ok(self) -> bool:
        return not self.violations


@dataclass
class Collected:
    """What the async part observed; everything the checkers need besides files on disk."""

    t_start: float = 0.0
    t_faults: float = 0.0
    t_heal: float | None = None
    recovery_s: float | None = None
    terminal_s: float | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    replica_samples: list[StatusSample] = field(default_factory=list)
    final_jobs: list[dict[str, Any]] = field(default_factory=list)
    agents: list[dict[str, Any]] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    schedule: list[Fault] = field(default_factory=list)


class Run:
    def __init__(self, cfg: RunConfig, progress: Progress = print) -> None:
        self.cfg = cfg
        self.progress = progress
        self.prefix = f"{PREFIX}{secrets.token_hex(2)}"
        short = "pause-lease" if cfg.scenario == "pause-lease" else ("-".join(cfg.nemeses) or "none")
        if len(short) > 40:
            short = f"{len(cfg.nemeses)}nemeses"
        self.run_id = f"{self.prefix}-s{cfg.seed}-{short}"
        self.run_dir = cfg.out_dir / self.run_id
        self.tasks_dir = self.run_dir / "tasks"
        self.logs_dir = self.run_dir / "logs"
        self.node_ids = [f"n{i + 1}" for i in range(cfg.nodes)]
        self.registry: sysutil.Registry | None = None
        self.net: Network | None = None
        self.cluster: Cluster | None = None
        self.history: History | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[Collected] | None = None
        self._cleaned = False

    # ------------------------------------------------------------------ lifecycle

    def execute(self) -> RunResult:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tasks_dir.mkdir(exist_ok=True)
        self.tasks_dir.chmod(0o777)
        self.logs_dir.mkdir(exist_ok=True)
        atexit.register(self.cleanup)
        collected = Collected(t_start=time.time())
        try:
            needs_faketime = "clock" in cfg.nemeses
            if cfg.backend == "netns":
                sysutil.ensure_tools(needs_faketime, self.progress)
            self.registry = sysutil.Registry(self.prefix)
            self.history = History(self.run_dir / "history.jsonl")
            self.net = make_network(cfg.backend, self.prefix, self.node_ids, self.registry)
            if cfg.backend != "netns" and any(n in NEEDS_NETNS for n in cfg.nemeses):
                raise RuntimeError(f"nemeses {list(NEEDS_NETNS)} need the netns backend (root)")
            opts = ClusterOptions(
                nodes=cfg.nodes,
                unsafe_no_fencing=cfg.unsafe_no_fencing,
                faketime=needs_faketime,
                tmpfs_mb=cfg.tmpfs_mb if "disk" in cfg.nemeses else 0,
                timing=dict(cfg.timing),
            )
            self.cluster = Cluster(
                self.net, Path("/tmp") / self.prefix, self.logs_dir, opts, self.registry, self.history.event
            )
            self.cluster.markers.append(str(self.tasks_dir))
            self.net.setup()
            self.cluster.setup()
            self.cluster.start_all()
            collected = self._run_loop_thread()
        except BaseException as e:
            collected.error = f"{type(e).__name__}: {e}"
            self.progress(f"  run error: {collected.error}")
            if not isinstance(e, Exception):
                self.cleanup()
                raise
            (self.run_dir / "error.txt").write_text(traceback.format_exc())
        finally:
            self.cleanup()
        return self._finish(collected)

    def _run_loop_thread(self) -> Collected:
        result: list[Collected] = []
        errors: list[BaseException] = []
        assert self.net is not None

        def target() -> None:
            try:
                assert self.net is not None
                self.net.enter_client_side()
                loop = asyncio.new_event_loop()
                self._loop = loop
                try:
                    self._main_task = loop.create_task(self._main())
                    result.append(loop.run_until_complete(self._main_task))
                finally:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.close()
            except BaseException as e:
                errors.append(e)

        th = threading.Thread(target=target, name="chaos-loop", daemon=True)
        th.start()
        budget = self.cfg.duration_s + self.cfg.recovery_bound_s + self.cfg.terminal_bound_s + 180
        try:
            th.join(budget)
        except BaseException:
            self._cancel_loop()
            th.join(20)
            raise
        if th.is_alive():
            self._cancel_loop()
            th.join(20)
            raise TimeoutError(f"run exceeded its {budget:.0f}s budget")
        if errors:
            raise errors[0]
        return result[0]

    def _cancel_loop(self) -> None:
        loop, task = self._loop, self._main_task
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        with contextlib.suppress(Exception):
            if self.cluster is not None:
                self.cluster.teardown()
        with contextlib.suppress(Exception):
            if self.net is not None:
                self.net.teardown()
        with contextlib.suppress(Exception):
            if self.registry is not None:
                leftovers = sysutil.cleanup_prefix(self.prefix, self.registry.data)
                if leftovers:
                    self.progress(f"  cleanup removed leftovers: {', '.join(leftovers)}")
                self.registry.drop()
        if self.history is not None:
            self.history.close()
        with contextlib.suppress(Exception):
            atexit.unregister(self.cleanup)

    # ------------------------------------------------------------------ async part

    async def _main(self) -> Collected:
        assert self.cluster is not None and self.history is not None and self.net is not None
        cfg, cl, hist = self.cfg, self.cluster, self.history
        col = Collected(t_start=time.time())
        urls = {n: self.net.client_url(n) for n in self.node_ids}
        async with Api(urls, cl.token) as api:
            monitor = asyncio.create_task(self._monitor(api, col))
            try:
                leader = await self._wait_leader(api, 60.0)
                if leader is None:
                    col.error = "no leader within 60s of starting the cluster"
                    return col
                hist.event("ready", leader=leader)
                self.progress(f"  cluster up in {time.time() - col.t_start:.1f}s, leader {leader}")
                nemesis = Nemesis(cl, api, hist, cfg.seed)
                col.t_faults = time.time()
                if cfg.scenario == "pause-lease":
                    await self._pause_lease(api, nemesis, col)
                else:
                    await self._random(api, nemesis, col)
                col.injected = dict(nemesis.injected)
                await nemesis.heal_all()
                col.t_heal = time.time()
                self.progress("  healed; waiting for recovery")
                leader = await self._wait_leader(api, cfg.recovery_bound_s)
                col.recovery_s = None if leader is None else time.time() - col.t_heal
                await self._wait_terminal(api, col)
                await self._sample_replicas(api, col)
                col.final_jobs, col.agents = await self._final_state(api)
            finally:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor
        return col

    async def _random(self, api: Api, nemesis: Nemesis, col: Collected) -> None:
        cfg = self.cfg
        assert self.history is not None
        schedule = make_schedule(cfg.seed, cfg.nemeses, self.node_ids, cfg.duration_s)
        col.schedule = schedule
        (self.run_dir / "schedule.json").write_text(json.dumps([f.to_json() for f in schedule], indent=1))
        end = max(cfg.duration_s, schedule_end(schedule))
        cmd = TaskCommand(sys.executable, str(TASK_SCRIPT), str(self.tasks_dir))
        wl = WorkloadOptions(clients=cfg.clients, duration_s=end)
        clients = [
            Client(i, cfg.seed, self.run_id, api, self.node_ids, self.history, cmd, wl) for i in range(cfg.clients)
        ]
        t0 = col.t_faults
        await asyncio.gather(
            nemesis.run(schedule, t0, self.progress),
            run_clients(clients, t0 + end),
        )

    async def _pause_lease(self, api: Api, nemesis: Nemesis, col: Collected) -> None:
        """Pause the node running a long task past its lease; watch the leader replace the attempt."""
        assert self.cluster is not None and self.history is not None
        hist = self.history
        cmd = TaskCommand(sys.executable, str(TASK_SCRIPT), str(self.tasks_dir))
        leader = await find_leader(api, self.node_ids) or self.node_ids[0]
        spec = long_job("pause-0", cmd, duration=60.0)
        key = f"{self.run_id}-pause-0"
        op = hist.invoke(0, "submit", name="pause-0", key=key, node=leader, attempt=0)
        r = await api.request(leader, "POST", "/v1/jobs", spec, key=key)
        if r.kind != "ok" or not isinstance(r.body, dict):
            hist.complete(op, 0, "submit", r.kind, name="pause-0", key=key, status=r.status, error=r.error)
            col.error = f"could not submit the long job: {r.status} {r.body} {r.error}"
            return
        job_id = str(r.body["id"])
        hist.complete(op, 0, "submit", "ok", name="pause-0", key=key, job_id=job_id, status=r.status)
        first = await self._wait_attempt(api, job_id, None, 30.0)
        if first is None:
            col.error = "the long task never started"
            return
        agent, first_id = first
        self.progress(f"  long task running on {agent} ({first_id}); pausing {agent}")
        fault = Fault("pause", 0.0, self.cfg.pause_s, {"target": agent, "scope": self.cfg.pause_scope})
        info = await nemesis.start(fault)
        t_pause = time.time()
        others = [n for n in self.node_ids if n != agent]
        second = await self._wait_attempt(api, job_id, first_id, self.cfg.pause_s + 20.0, nodes=others)
        if second is not None:
            self.progress(f"  replacement {second[1]} running on {second[0]} after {time.time() - t_pause:.1f}s")
        else:
            col.notes.append("no replacement attempt started while the node was paused")
        await asyncio.sleep(max(0.0, t_pause + self.cfg.pause_s - time.time()))
        await nemesis.stop(fault, info)
        self.progress(f"  resumed {agent} after {time.time() - t_pause:.1f}s")
        # let the resumed agent reconcile, then end the job
        await self._wait_records_quiet(first_id, 8.0)
        op = hist.invoke(0, "cancel", job_id=job_id, node=leader)
        r = await api.request(leader, "DELETE", f"/v1/jobs/{job_id}")
        hist.complete(op, 0, "cancel", r.kind, job_id=job_id, status=r.status, error=r.error)

    async def _wait_attempt(
        self, api: Api, job_id: str, not_id: str | None, timeout: float, nodes: list[str] | None = None
    ) -> tuple[str, str] | None:
        """(agent, attempt id) of a RUNNING attempt of the job other than ``not_id``, once its task started."""
        deadline = time.time() + timeout
        nodes = nodes or self.node_ids
        while time.time() < deadline:
            for n in nodes:
                job = await api.get(n, f"/v1/jobs/{job_id}", timeout_s=1.0)
                if not isinstance(job, dict):
                    continue
                for t in job.get("tasks", []):
                    for a in t.get("attempts", []):
                        if a.get("state") == "RUNNING" and a.get("id") != not_id and self._started(str(a["id"])):
                            return str(a.get("agent_id")), str(a["id"])
            await asyncio.sleep(0.2)
        return None

    def _started(self, attempt_id: str) -> bool:
        return any(f".{checkers_safe(attempt_id)}." in p.name for p in self.tasks_dir.glob("*.jsonl"))

    async def _wait_records_quiet(self, attempt_id: str, timeout: float) -> None:
        """Until the attempt's record file stops growing for a second (it was killed or ended)."""
        deadline = time.time() + timeout
        last = -1
        stable_since = time.time()
        while time.time() < deadline:
            size = sum(p.stat().st_size for p in self.tasks_dir.glob(f"*.{checkers_safe(attempt_id)}.*.jsonl"))
            if size != last:
                last, stable_since = size, time.time()
            elif time.time() - stable_since >= 1.0:
                return
            await asyncio.sleep(0.1)

    async def _monitor(self, api: Api, col: Collected) -> None:
        assert self.cluster is not None and self.history is not None
        rnd = 0
        while True:
            t = time.time()
            st = await api.statuses(timeout_s=1.0)
            for n, s in st.items():
                col.samples.append({
                    "t": t, "round": rnd, "node": n, "up": s is not None,
                    "role": s.get("role") if s else None, "leader": s.get("leader_id") if s else None,
                    "term": s.get("term") if s else None, "applied": s.get("applied_index") if s else None,
                    "digest": s.get("state_digest") if s else None,
                })
            for nid, code in await asyncio.to_thread(self.cluster.check_exits):
                col.crashes.append({"t": time.time(), "node": nid, "code": code})
                self.history.event("node-exit", node=nid, code=code)
                self.progress(f"  node {nid} exited unexpectedly with {code}")
            rnd += 1
            await asyncio.sleep(max(0.0, 0.5 - (time.time() - t)))

    async def _wait_leader(self, api: Api, timeout: float) -> str | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = await api.statuses(timeout_s=1.0)
            samples = [
                StatusSample(time.time(), 0, n, int(s.get("applied_index") or 0), str(s.get("state_digest")),
                             s.get("leader_id"), s.get("role"))
                for n, s in st.items() if s
            ]
            leader = checkers.leader_agreement(samples, self.node_ids)
            if leader is not None:
                return leader
            await asyncio.sleep(0.2)
        return None

    async def _acked_ids(self) -> set[str]:
        assert self.history is not None
        return {i for s in submissions(self.history.entries).values() if s.outcome == "ok" for i in s.ids}

    async def _wait_terminal(self, api: Api, col: Collected) -> None:
        assert col.t_heal is not None
        acked = await self._acked_ids()
        deadline = col.t_heal + self.cfg.terminal_bound_s
        while time.time() < deadline:
            leader = await find_leader(api, self.node_ids)
            body = await api.get(leader, "/v1/jobs?limit=100000", timeout_s=3.0) if leader else None
            if isinstance(body, dict):
                states = {str(j.get("id")): str(j.get("state")) for j in body.get("jobs", [])}
                if all(states.get(i) in TERMINAL for i in acked):
                    col.terminal_s = time.time() - col.t_heal
                    return
            await asyncio.sleep(0.5)

    async def _sample_replicas(self, api: Api, col: Collected) -> None:
        deadline = time.time() + self.cfg.replica_bound_s
        rnd = 0
        agreed_rounds = 0
        while time.time() < deadline and agreed_rounds < 3:
            st = await api.statuses(timeout_s=1.0)
            now = time.time()
            group = [
                StatusSample(now, rnd, n, int(s.get("applied_index") or 0), str(s.get("state_digest")),
                             s.get("leader_id"), s.get("role"))
                for n, s in st.items() if s
            ]
            col.replica_samples.extend(group)
            if len(group) == len(self.node_ids) and len({(g.applied_index, g.digest) for g in group}) == 1:
                agreed_rounds += 1
            rnd += 1
            await asyncio.sleep(0.05)

    async def _final_state(self, api: Api) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        leader = await find_leader(api, self.node_ids)
        order = ([leader] if leader else []) + [n for n in self.node_ids if n != leader]
        for n in order:
            jobs = await api.get(n, "/v1/jobs?limit=100000", timeout_s=5.0)
            agents = await api.get(n, "/v1/agents", timeout_s=5.0)
            if isinstance(jobs, dict) and isinstance(agents, dict):
                return list(jobs.get("jobs", [])), list(agents.get("agents", []))
        return [], []

    # ------------------------------------------------------------------ checks and report

    def _finish(self, col: Collected) -> RunResult:
        cfg = self.cfg
        entries = self.history.entries if self.history else []
        kills = self.cluster.kills if self.cluster else {}
        attempts = checkers.load_attempts(self.tasks_dir, kills)
        subs = submissions(entries)
        violations: list[Violation] = []
        warnings: list[Violation] = []
        if col.error:
            violations.append(Violation("run-error", col.error))
        ov, ow = checkers.check_overlaps(attempts, cfg.max_gap_s)
        violations += ov
        warnings += ow
        totals = {str(a.get("id")): (float(a.get("total", {}).get("cpus", 0)),
                                     float(a.get("total", {}).get("mem_mb", 0))) for a in col.agents}
        for nid in self.node_ids:
            totals.setdefault(nid, (2.0, 1024.0))
        rv, rw = checkers.check_resources(attempts, totals)
        violations += rv
        warnings += rw
        if not col.error:
            violations += checkers.check_recovery(col.recovery_s, cfg.recovery_bound_s)
            violations += checkers.check_acknowledged(subs, col.final_jobs, cfg.terminal_bound_s)
            dv, dup_stats = checkers.check_duplicates(subs, col.final_jobs)
            violations += dv
            pv, rep_info = checkers.check_replicas(col.replica_samples, self.node_ids)
            violations += pv
            during = [
                StatusSample(float(m["t"]), int(m["round"]), str(m["node"]), int(m["applied"]), str(m["digest"]))
                for m in col.samples if m["up"] and m.get("applied") is not None and m.get("digest")
            ]
            violations += [v for v in checkers.check_replicas(during, self.node_ids)[0] if v.kind == "divergent"]
        else:
            dup_stats, rep_info = {}, {}
        for c in col.crashes:
            warnings.append(Violation("node-crash", f"node {c['node']} exited on its own with code {c['code']}", c))
        log_warnings = checkers.scan_node_logs(self.logs_dir)
        warnings += log_warnings
        counts = op_counts(entries)
        summary: dict[str, Any] = {
            "run_id": self.run_id,
            "seed": cfg.seed,
            "scenario": cfg.scenario,
            "nemeses": cfg.nemeses,
            "nodes": cfg.nodes,
            "backend": cfg.backend,
            "fencing": not cfg.unsafe_no_fencing,
            "faults": col.injected,
            "ops": counts,
            "ops_by_f": report.ops_by_f(entries),
            "submissions": {k: sum(1 for s in subs.values() if s.outcome == k) for k in ("ok", "fail", "info")},
            "unknown_submissions": dup_stats,
            "attempts_recorded": len(attempts),
            "violations": [v.to_json() for v in violations],
            "warnings": [w.to_json() for w in warnings],
            "recovery_s": None if col.recovery_s is None else round(col.recovery_s, 2),
            "terminal_s": None if col.terminal_s is None else round(col.terminal_s, 2),
            "fault_recoveries": report.fault_recoveries(entries, col.samples, self.node_ids),
            "replicas": rep_info,
            "crashes": col.crashes,
            "notes": col.notes,
            "error": col.error,
            "wall_s": round(time.time() - col.t_start, 1),
            "replay": cfg.replay_command(),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        (self.run_dir / "summary.md").write_text(report.run_markdown(summary))
        (self.run_dir / "monitor.json").write_text(json.dumps(col.samples))
        with contextlib.suppress(Exception):
            report.timeline_png(self.run_dir / "timeline.png", entries, col.samples, self.node_ids, col.t_faults,
                                attempts, summary)
        if not violations and not log_warnings and not col.crashes and not cfg.keep:
            shutil.rmtree(self.tasks_dir, ignore_errors=True)
            shutil.rmtree(self.logs_dir, ignore_errors=True)
        return RunResult(self.run_id, self.run_dir, cfg, summary, violations, warnings)


def checkers_safe(s: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:80] or "x"
