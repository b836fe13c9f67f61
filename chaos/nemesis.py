"""Carries out a fault schedule against a live cluster, writing every start and stop to the history."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from chaos import grudge
from chaos.api import Api
from chaos.cluster import Cluster
from chaos.history import History
from chaos.schedule import Fault


async def find_leader(api: Api, nodes: list[str]) -> str | None:
    """The leader most nodes name, if that node also says it leads."""
    st = await api.statuses(timeout_s=1.0)
    votes = Counter(s.get("leader_id") for s in st.values() if s and s.get("leader_id"))
    for leader, _ in votes.most_common():
        s = st.get(str(leader))
        if s and s.get("role") == "leader":
            return str(leader)
    return None


class Nemesis:
    def __init__(self, cluster: Cluster, api: Api, history: History, seed: int) -> None:
        self.cluster = cluster
        self.api = api
        self.history = history
        self.rng = random.Random(f"{seed}/nemesis-fallback")  # only when a run-time target is missing
        self.injected: Counter[str] = Counter()
        self.active: dict[str, Any] | None = None

    async def _target(self, params: dict[str, Any]) -> tuple[str, str]:
        target = str(params.get("target"))
        if target == "leader":
            leader = await find_leader(self.api, self.cluster.ids)
            if leader is not None:
                return leader, "leader"
            return self.rng.choice(self.cluster.ids), "leader unknown: random node"
        return target, "scheduled"

    async def start(self, fault: Fault) -> dict[str, Any]:
        c = self.cluster
        net = c.net
        info: dict[str, Any] = {"kind": fault.kind, "scheduled_at": fault.at, "duration": fault.duration}
        p = dict(fault.params)
        if "cuts" in p:
            cuts = frozenset((str(a), str(b)) for a, b in p["cuts"])
            await asyncio.to_thread(net.set_cuts, cuts)
            info.update({k: v for k, v in p.items() if k != "cuts"}, cuts=len(cuts))
        elif fault.kind == "isolate-leader":
            target, how = await self._target(p)
            cuts, extra = grudge.isolate(c.ids, target)
            await asyncio.to_thread(net.set_cuts, cuts)
            info.update(extra, resolved=how)
        elif fault.kind == "kill":
            target, how = await self._target(p)
            pids = await asyncio.to_thread(c.kill, target)
            info.update(target=target, resolved=how, pids=pids)
        elif fault.kind == "pause":
            target, how = await self._target(p)
            scope = str(p.get("scope", "node"))
            await asyncio.to_thread(c.pause, target, scope)
            info.update(target=target, resolved=how, pid=c.nodes[target].pid, scope=scope)
        elif fault.kind == "clock":
            target = str(p["target"])
            offset = c.nodes[target].skew_s + float(p["jump_s"])
            await asyncio.to_thread(c.set_skew, target, offset)
            info.update(target=target, jump_s=p["jump_s"], offset_s=offset)
        elif fault.kind == "disk":
            target = str(p["target"])
            written = await asyncio.to_thread(c.fill_disk, target)
            info.update(target=target, ballast_bytes=written)
        else:
            raise ValueError(f"unknown fault {fault.kind}")
        self.injected[fault.kind] += 1
        self.active = info
        self.history.event("nemesis-start", **info)
        return info

    async def stop(self, fault: Fault, info: dict[str, Any]) -> None:
        c = self.cluster
        if "cuts" in fault.params or fault.kind == "isolate-leader":
            await asyncio.to_thread(c.net.heal)
        elif fault.kind == "kill":
            await asyncio.to_thread(c.start, str(info["target"]))
        elif fault.kind == "pause":
            await asyncio.to_thread(c.resume, str(info["target"]))
        elif fault.kind == "clock":
            pass  # the jump stays: the node's clocks now run ahead by offset_s (see set_skew)
        elif fault.kind == "disk":
            await asyncio.to_thread(c.free_disk, str(info["target"]))
        self.active = None
        self.history.event("nemesis-stop", kind=fault.kind, target=info.get("target"))

    async def run(self, schedule: list[Fault], t0: float, progress: Any = None) -> None:
        """Apply each fault at ``t0 + at`` and undo it at ``t0 + at + duration`` (wall-clock schedule)."""
        for fault in schedule:
            await asyncio.sleep(max(0.0, t0 + fault.at - time.time()))
            info = await self.start(fault)
            if progress is not None:
                progress(f"  t={time.time() - t0:5.1f}s {fault.kind} {_short(info)}")
            try:
                await asyncio.sleep(max(0.0, t0 + fault.end - time.time()))
            finally:
                await self.stop(fault, info)

    async def heal_all(self) -> list[str]:
        """Undo everything: no cuts, no paused node, no skew, no ballast, every node running."""
        await asyncio.to_thread(self.cluster.net.heal)
        restarted = await asyncio.to_thread(self.cluster.heal_processes)
        self.history.event("heal-all", restarted=restarted)
        return restarted


def _short(info: dict[str, Any]) -> str:
    keep = ("target", "components", "bridge", "ring", "mode", "jump_s", "offset_s", "resolved")
    return " ".join(f"{k}={info[k]}" for k in keep if k in info)
