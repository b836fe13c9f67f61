"""The local cluster as `conclave dev` runs it — real agents, real task processes — measured two ways:

* leader failover: SIGKILL the leader, then time until the first launch by the new leader (a job whose
  ``not_before`` lies just after the kill, so no one else could have launched it) and until the survivors agree
  on a new leader; the killed node is restarted and the cluster is healthy again before the next trial;
* submit → RUNNING for sequential submissions: from sending ``POST /v1/jobs`` to the attempt's ``started_at``
  (stamped when the agent reports RUNNING, after its supervisor started the task's process; same machine clock).

``python -m bench local [--trials 10] [--submissions 200]`` prints a table and writes JSON.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import progress, summary
from node.localcluster import LocalCluster, running_cluster, wait_until


def _one_task(name: str, not_before: float | None = None) -> dict[str, Any]:
    job: dict[str, Any] = {"name": name, "tasks": [{"name": "t", "command": ["true"]}]}
    if not_before is not None:
        job["not_before"] = not_before
    return job


def _attempt(c: LocalCluster, node: str, job_id: str) -> dict[str, Any] | None:
    code, job = c.api(node, "GET", f"/v1/jobs/{job_id}")
    if code != 200:
        return None
    attempts = job["tasks"][0]["attempts"]
    return attempts[0] if attempts else None


def failover(c: LocalCluster, trials: int) -> dict[str, Any]:
    launch_s: list[float] = []
    leader_s: list[float] = []
    for i in range(trials):
        old = c.wait_ready(timeout=60)
        survivor = next(n for n in c.procs if n != old)
        kill_at = time.time()
        code, body = c.api(survivor, "POST", "/v1/jobs", _one_task(f"failover-{i}", kill_at + 0.05))
        assert code == 201, body
        kill_at = time.time()
        c.procs[old].send_signal(signal.SIGKILL)
        c.procs[old].wait(10)
        del c.procs[old]
        others = list(c.procs)
        new = c.wait_leader(nodes=others, timeout=30)
        leader_s.append(time.time() - kill_at)
        job_id = body["id"]

        def launched(node: str = survivor, job_id: str = job_id) -> dict[str, Any] | None:
            return _attempt(c, node, job_id)

        att = wait_until("a launch by the new leader", launched, 30, 0.005)
        launch_s.append(att["launched_at"] - kill_at)
        progress(f"failover {i + 1}/{trials}: {old} -> {new}, first launch after {launch_s[-1]:.3f}s")
        c.start(only=[old])
    return {"trials": trials, "first_launch_s": summary(launch_s), "new_leader_s": summary(leader_s)}


def sequential(c: LocalCluster, count: int) -> dict[str, Any]:
    node = c.wait_ready(timeout=60)
    samples: list[float] = []
    for i in range(count):
        sent = time.time()
        code, body = c.api(node, "POST", "/v1/jobs", _one_task(f"seq-{i}"))
        assert code == 201, body

        def running(job_id: str = body["id"]) -> dict[str, Any] | None:
            att = _attempt(c, node, job_id)
            return att if att and att["started_at"] is not None else None

        att = wait_until("RUNNING", running, 30, 0.002)
        samples.append((att["started_at"] - sent) * 1000)
    return {"count": count, "submit_to_running_ms": summary(samples)}


def run(trials: int, submissions: int, out: Path, durable: bool = True) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="conclave-bench-local-") as tmp,
        running_cluster(Path(tmp) / "c", durable=durable) as c,
    ):
        progress(f"local cluster up: {sorted(c.procs)}; {submissions} sequential submissions")
        res: dict[str, Any] = {"durable": durable, "sequential": sequential(c, submissions)}
        progress(f"{trials} failover trials")
        res["failover"] = failover(c, trials)
    out.write_text(json.dumps(res, indent=2))
    print("| measurement | min | p50 | p99 | max |\n|---|---|---|---|---|")
    rows = [
        (f"submit → RUNNING, {submissions} sequential (ms)", res["sequential"]["submit_to_running_ms"], 1),
        (f"SIGKILL leader → first launch, {trials} trials (s)", res["failover"]["first_launch_s"], 3),
        (f"SIGKILL leader → agreed new leader, {trials} trials (s)", res["failover"]["new_leader_s"], 3),
    ]
    for label, st, digits in rows:
        print(f"| {label} | " + " | ".join(f"{st[k]:.{digits}f}" for k in ("min", "p50", "p99", "max")) + " |")
    return res
