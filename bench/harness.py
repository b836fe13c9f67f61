"""A local cluster for benchmarks: real node processes on 127.0.0.1 whose agents are simulated.

Built on :class:`node.localcluster.LocalCluster`; adds the benchmark's agent and timing settings, async HTTP
helpers for open-loop load, and per-node memory and disk readings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench.core import AGENT_CPUS_M
from bench.stats import dir_bytes, proc_memory_mb, progress
from node.localcluster import LocalCluster

T = TypeVar("T")

_DEV_AGENT_BLOCK = "[agent]\nenabled = true\ncpus = 2.0\nmem_mb = 2048\ndisk_mb = 10240\n"


def agent_block(simulated: int, task_s: float = 0.0, heartbeat_s: float = 2.0) -> str:
    return (
        "[agent]\n"
        "enabled = false\n"
        f"cpus = {AGENT_CPUS_M / 1000:.1f}\n"
        "mem_mb = 1000000000\n"
        "disk_mb = 1000000000\n"
        f"simulated = {simulated}\n"
        f"simulated_task_s = {task_s}\n"
        f"simulated_heartbeat_s = {heartbeat_s}\n"
    )


class BenchCluster:
    def __init__(
        self,
        directory: Path,
        agents_per_node: int,
        timing: dict[str, float] | None = None,
        durable: bool = True,
    ) -> None:
        self.dir = directory
        self.agents_per_node = agents_per_node
        self.lc = LocalCluster(directory, nodes=3)
        for p in self.lc.meta["nodes"]:
            cfg = directory / p["id"] / "conclave.toml"
            text = cfg.read_text()
            if _DEV_AGENT_BLOCK not in text:
                raise RuntimeError(f"{cfg}: unexpected layout; cannot set simulated agents")
            text = text.replace(_DEV_AGENT_BLOCK, agent_block(agents_per_node))
            if not durable:
                if "\ndurable = true\n" in text:
                    text = text.replace("\ndurable = true\n", "\ndurable = false\n", 1)
                else:
                    text = text.replace("[node]\n", "[node]\ndurable = false\n", 1)
            if timing:
                text += "\n[timing]\n" + "".join(f"{k} = {v}\n" for k, v in timing.items())
            cfg.write_text(text)
        self.nodes = [p["id"] for p in self.lc.meta["nodes"]]
        self.urls: dict[str, str] = dict(self.lc.urls)
        self.token: str = self.lc.token
        self.peak_mb: dict[str, float] = {}

    @property
    def total_agents(self) -> int:
        return self.agents_per_node * len(self.nodes)

    # ------------------------------------------------------------------ processes

    def start(self, only: list[str] | None = None) -> None:
        self.lc.start(only)

    def stop(self) -> None:
        self.sample_peaks()
        self.lc.stop()

    def kill(self, node_id: str) -> None:
        self.sample_peaks([node_id])
        self.lc.kill(node_id)

    def running(self) -> list[str]:
        return list(self.lc.procs)

    def memory(self) -> dict[str, tuple[float, float]]:
        return {n: proc_memory_mb(p.pid) for n, p in self.lc.procs.items()}

    def sample_peaks(self, nodes: list[str] | None = None) -> None:
        for n, (_rss, hwm) in self.memory().items():
            if nodes is None or n in nodes:
                self.peak_mb[n] = max(self.peak_mb.get(n, 0.0), hwm)

    def disk(self) -> dict[str, dict[str, int]]:
        out = {}
        for n in self.nodes:
            raft = self.dir / n / "data" / "raft"
            files = {p.name: p.stat().st_size for p in raft.glob("raft.*") if p.is_file()} if raft.exists() else {}
            out[n] = {"allocated_bytes": dir_bytes(raft) if raft.exists() else 0, **files}
        return out

    # ------------------------------------------------------------------ waiting

    def status(self, node_id: str, timeout: float = 5.0) -> dict[str, Any]:
        from node.client import request

        code, body = request(self.urls[node_id], "GET", "/v1/status?digest=0", timeout=timeout)
        if code != 200 or not isinstance(body, dict):
            raise RuntimeError(f"{node_id}: status {code}")
        return body

    def leader(self, nodes: list[str] | None = None) -> str | None:
        """The leader every listed running node agrees on and that is acting, else None."""
        try:
            sts = {n: self.status(n, 2.0) for n in (nodes or self.running())}
        except Exception:
            return None
        leaders = {s["leader_id"] for s in sts.values()}
        if len(leaders) != 1 or None in leaders:
            return None
        leader = leaders.pop()
        return leader if leader in sts and sts[leader]["acting_leader"] else None

    def wait_healthy(self, timeout: float) -> str:
        """A leader is agreed and every simulated agent of every running node is active."""
        deadline = time.monotonic() + timeout
        seen = "no agreed, acting leader"
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                code, body = self.lc.api(leader, "GET", "/v1/agents")
                if code == 200:
                    states = {a["id"]: a["state"] for a in body["agents"]}
                    want = {f"{n}-sim{i:05d}" for n in self.running() for i in range(self.agents_per_node)}
                    missing = sorted(a for a in want if states.get(a) != "active")
                    if not missing:
                        return leader
                    seen = f"leader {leader}; {len(missing)} agent(s) not active, e.g. " + ", ".join(
                        f"{a}={states.get(a, 'unregistered')}" for a in missing[:3]
                    )
            time.sleep(0.1)
        raise TimeoutError(f"cluster not healthy within {timeout}s ({seen})")

    def terms(self) -> dict[str, int]:
        return {n: int(self.status(n)["term"]) for n in self.running()}


# ---------------------------------------------------------------------- async HTTP


class Api:
    """Async admin-API client for load generation (one connection pool, bounded)."""

    def __init__(self, cluster: BenchCluster, limit: int = 256) -> None:
        self.cluster = cluster
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, force_close=False),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self.auth = {"Authorization": f"Bearer {cluster.token}"}

    async def close(self) -> None:
        await self.session.close()

    async def submit(self, node: str, spec: dict[str, Any], key: str | None = None) -> tuple[int, str | None]:
        """POST a job: (201, job id) or (status, error code). ``key`` (Idempotency-Key) makes a retry after a 503
        return the first job's id."""
        url = self.cluster.urls[node] + "/v1/jobs"
        headers = self.auth if key is None else {**self.auth, "Idempotency-Key": key}
        async with self.session.post(url, json=spec, headers=headers) as resp:
            body = await resp.json()
            if resp.status == 201:
                return resp.status, body.get("id")
            return resp.status, (body.get("error") or {}).get("code")  # why it was refused

    async def get(self, node: str, path: str) -> tuple[int, Any]:
        async with self.session.get(self.cluster.urls[node] + path) as resp:
            return resp.status, await resp.json()

    async def job(self, node: str, job_id: str) -> dict[str, Any] | None:
        code, body = await self.get(node, f"/v1/jobs/{job_id}")
        return body if code == 200 else None

    async def jobs_settled(self, node: str) -> bool:
        """No job is pending or running (cheap: each query stops at its first match)."""
        for state in ("pending", "running"):
            code, body = await self.get(node, f"/v1/jobs?state={state}&limit=1")
            if code != 200 or body["jobs"]:
                return False
        return True

    async def fetch_jobs(self, node: str, job_ids: list[str], concurrency: int = 16) -> list[dict[str, Any]]:
        sem = asyncio.Semaphore(concurrency)

        async def one(jid: str) -> dict[str, Any] | None:
            async with sem:
                return await self.job(node, jid)

        got = await asyncio.gather(*(one(j) for j in job_ids))
        return [g for g in got if g is not None]


async def poll(what: str, fn: Callable[[], Awaitable[T | None]], timeout: float, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await fn()
            if value:
                return value
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def attempts_of(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for j in jobs for t in j["tasks"] for a in t["attempts"]]


def note(msg: str) -> None:
    progress(msg)
