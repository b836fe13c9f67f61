"""Clients that submit and cancel workflows through random nodes while faults run, recording a history.

Each client draws every decision (pause before the next operation, submit or cancel, which node, the job
itself) from its own ``random.Random`` seeded from the run seed, so a seed replays the same requests; which
of them succeed depends on timing. Each logical submission has one Idempotency-Key used by all its retries.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from chaos.api import Api
from chaos.history import FAIL, INFO, OK, History
from chaos.jobs import TaskCommand, make_job


@dataclass
class WorkloadOptions:
    clients: int = 2
    duration_s: float = 30.0
    max_ops_per_client: int = 60
    think_s: tuple[float, float] = (0.3, 1.5)
    cancel_p: float = 0.15
    retries: int = 2
    request_timeout_s: float = 6.0


class Client:
    def __init__(
        self, idx: int, seed: int, run_id: str, api: Api, nodes: list[str], history: History,
        cmd: TaskCommand, opts: WorkloadOptions,
    ) -> None:
        self.idx = idx
        self.rng = random.Random(f"{seed}/client/{idx}")
        self.run_id = run_id
        self.api = api
        self.nodes = nodes
        self.history = history
        self.cmd = cmd
        self.opts = opts
        self.acked: list[str] = []
        self.ops = 0

    async def submit(self, n: int) -> None:
        name = f"c{self.idx}-{n}"
        key = f"{self.run_id}-{name}"
        spec = make_job(self.rng, name, self.cmd)
        for attempt in range(self.opts.retries + 1):
            node = self.rng.choice(self.nodes)
            op = self.history.invoke(self.idx, "submit", name=name, key=key, node=node, attempt=attempt)
            r = await self.api.request(node, "POST", "/v1/jobs", spec, key=key,
                                       timeout_s=self.opts.request_timeout_s)
            self.ops += 1
            value = {"name": name, "key": key, "node": node, "status": r.status, "error": r.error}
            if r.kind == OK and isinstance(r.body, dict):
                job_id = str(r.body.get("id"))
                self.history.complete(op, self.idx, "submit", OK, job_id=job_id,
                                      duplicate=bool(r.body.get("duplicate")), **value)
                self.acked.append(job_id)
                return
            code = r.body.get("error", {}).get("code") if isinstance(r.body, dict) else None
            self.history.complete(op, self.idx, "submit", r.kind, code=code, **value)
            if r.kind == FAIL and r.status is not None and code != "no_leader":
                return  # refused for good (validation): retrying cannot help
            if self.ops >= self.opts.max_ops_per_client:
                return
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))

    async def cancel(self) -> None:
        job_id = self.rng.choice(self.acked)
        node = self.rng.choice(self.nodes)
        op = self.history.invoke(self.idx, "cancel", job_id=job_id, node=node)
        r = await self.api.request(node, "DELETE", f"/v1/jobs/{job_id}", key=f"{self.run_id}-cancel-{job_id}",
                                   timeout_s=self.opts.request_timeout_s)
        self.ops += 1
        code = r.body.get("error", {}).get("code") if isinstance(r.body, dict) else None
        self.history.complete(op, self.idx, "cancel", r.kind, job_id=job_id, node=node, status=r.status,
                              code=code, error=r.error)

    async def run(self, stop_at: float) -> None:
        n = 0
        while time.time() < stop_at and self.ops < self.opts.max_ops_per_client:
            await asyncio.sleep(self.rng.uniform(*self.opts.think_s))
            if time.time() >= stop_at:
                break
            if self.acked and self.rng.random() < self.opts.cancel_p:
                await self.cancel()
            else:
                await self.submit(n)
                n += 1


async def run_clients(clients: list[Client], stop_at: float) -> None:
    await asyncio.gather(*(c.run(stop_at) for c in clients))


__all__ = ["FAIL", "INFO", "OK", "Client", "WorkloadOptions", "run_clients"]
