"""Real node processes on loopback, for tests, benchmarks and the chaos suite: start, stop, SIGKILL, restart, wait."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from node.client import Client, Cluster, request
from node.dev import prepare, start_nodes, stop_nodes

T = TypeVar("T")


def wait_until(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # the condition may raise while nodes come and go
            last_exc = e
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else "")
    )


class LocalCluster:
    def __init__(
        self,
        directory: Path,
        nodes: int = 3,
        env: dict[str, str] | None = None,
        durable: bool = True,
        extra_config: str = "",
        node_config: str = "",
    ) -> None:
        self.dir = directory
        self.meta = prepare(directory, nodes, durable=durable, extra=extra_config, node_extra=node_config)
        self.env = env or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.cluster = Cluster.from_file(directory / "cluster.json")
        self.client = Client(self.cluster, timeout=5.0)
        self.urls = {p["id"]: p["url"] for p in self.meta["nodes"]}
        self.token = self.meta["token"]

    def start(self, only: list[str] | None = None) -> None:
        meta = dict(self.meta)
        if only is not None:
            meta["nodes"] = [p for p in self.meta["nodes"] if p["id"] in only]
        self.procs.update(start_nodes(self.dir, meta, self.env))

    def stop(self) -> None:
        stop_nodes(self.procs)
        self.procs.clear()

    def kill(self, node_id: str) -> None:
        proc = self.procs.pop(node_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def terminate(self, node_id: str) -> None:
        stop_nodes({node_id: self.procs.pop(node_id)})

    def pid(self, node_id: str) -> int:
        return self.procs[node_id].pid

    def status(self, node_id: str, digest: bool = False) -> dict[str, Any]:
        path = "/v1/status" if digest else "/v1/status?digest=0"
        code, body = request(self.urls[node_id], "GET", path, timeout=2.0)
        assert code == 200
        assert isinstance(body, dict)
        return body

    def statuses(self, nodes: list[str] | None = None, digest: bool = False) -> dict[str, dict[str, Any]]:
        return {n: self.status(n, digest) for n in (nodes or list(self.procs))}

    def wait_leader(self, nodes: list[str] | None = None, timeout: float = 30.0) -> str:
        """Every listed (running) node agrees on one leader, and that leader is acting."""

        def agreed() -> str | None:
            sts = self.statuses(nodes)
            leaders = {s["leader_id"] for s in sts.values()}
            if len(leaders) != 1 or None in leaders:
                return None
            leader = leaders.pop()
            return leader if leader in sts and sts[leader]["acting_leader"] else None

        return wait_until("an agreed, acting leader", agreed, timeout)

    def wait_ready(self, timeout: float = 30.0) -> str:
        """A leader is agreed and every running node's agent is registered and active."""
        leader = self.wait_leader(timeout=timeout)

        def agents_active() -> bool:
            code, body = self.api(leader, "GET", "/v1/agents")
            active = {a["id"] for a in body["agents"] if a["state"] == "active"}
            return code == 200 and set(self.procs) <= active

        wait_until("every agent registered", agents_active, timeout)
        return leader

    def wait_converged(self, timeout: float = 20.0) -> tuple[int, str]:
        """All running nodes report the same applied index and digest (sampled until they do)."""

        def same() -> tuple[int, str] | None:
            sts = self.statuses(digest=True)
            pairs = {(s["applied_index"], s["state_digest"]) for s in sts.values()}
            return pairs.pop() if len(pairs) == 1 else None

        return wait_until("replicas to converge", same, timeout, interval=0.01)

    def api(
        self,
        node_id: str,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        tok = self.token if token == "default" else token
        return request(self.urls[node_id], method, path, tok, body, headers, timeout=10.0)

    def job(self, job_id: str, node_id: str | None = None) -> dict[str, Any]:
        node = node_id or next(iter(self.procs))
        code, body = self.api(node, "GET", f"/v1/jobs/{job_id}")
        assert code == 200, body
        assert isinstance(body, dict)
        return body

    def wait_job(self, job_id: str, states: tuple[str, ...] = ("complete",), timeout: float = 60.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            for node in list(self.procs):
                try:
                    job = self.job(job_id, node)
                except (AssertionError, OSError):
                    continue
                if job["state"] in ("complete", "failed", "cancelled"):
                    return job
                return None
            return None

        job = wait_until(f"job {job_id} to end", done, timeout, interval=0.1)
        assert job["state"] in states, job
        return job

    def alive_pids_of_tasks(self) -> list[int]:
        """Supervisor processes still alive under this cluster's directory (no orphans after a stop)."""
        out = []
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmd = (pid_dir / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(str(self.dir).encode() in part for part in cmd) and any(b"supervise.py" in p for p in cmd):
                out.append(int(pid_dir.name))
        return out


def sleep_job(name: str, seconds: float, tasks: int = 1, chain: bool = True) -> dict[str, Any]:
    ts = []
    for i in range(tasks):
        t: dict[str, Any] = {
            "name": f"t{i}",
            "command": ["/bin/sh", "-c", f"sleep {seconds}"],
            "max_attempts": 3,
            "backoff_s": 0.1,
        }
        if chain and i:
            t["depends_on"] = [f"t{i - 1}"]
        ts.append(t)
    return {"name": name, "tasks": ts}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def running_cluster(directory: Path, nodes: int = 3, **options: Any) -> Iterator[LocalCluster]:
    """A started, ready cluster; on exit every node is resumed (if frozen) and stopped, and no task is left."""
    c = LocalCluster(directory, nodes=nodes, **options)
    c.start()
    try:
        c.wait_ready()
        yield c
    finally:
        for proc in c.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        c.stop()
        wait_until("no task processes left behind", lambda: not c.alive_pids_of_tasks(), 10)
