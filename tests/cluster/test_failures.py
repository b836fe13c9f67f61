"""Failure semantics with real processes: frozen agents, a frozen leader, rolling kills under load, drain, retry."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from node.client import ClientError
from node.localcluster import LocalCluster, wait_until

pytestmark = pytest.mark.cluster


def ticking_task(name: str, ticks_dir: Path, seconds: float, **extra: Any) -> dict[str, Any]:
    """A task that appends `<attempt> <time>` every 50 ms to a file per attempt: liveness is observable."""
    n = int(seconds / 0.05)
    script = (
        f'f="{ticks_dir}/$CONCLAVE_ATTEMPT_ID"; mkdir -p "$(dirname "$f")"; i=0; '
        f'while [ $i -lt {n} ]; do date +%s.%N >> "$f"; i=$((i+1)); sleep 0.05; done'
    )
    return {"name": name, "command": ["/bin/sh", "-c", script], "max_attempts": 3, "backoff_s": 0, **extra}


def ticks(ticks_dir: Path, attempt_id: str) -> list[float]:
    path = ticks_dir / attempt_id
    if not path.exists():
        return []
    return [float(x) for x in path.read_text().split()]


def drain(c: LocalCluster, via: str, agent: str, deadline_s: float) -> None:
    code, body = c.api(via, "POST", f"/v1/agents/{agent}/drain", {"deadline_s": deadline_s})
    assert code == 200, body


def test_frozen_agent_is_fenced_then_replaced_never_overlapping(cluster: LocalCluster, tmp_path: Path) -> None:
    leader = cluster.wait_ready()
    drain(cluster, leader, leader, 3600)  # keep the task off the leader: we freeze the node that runs it
    ticks_dir = tmp_path / "ticks"
    code, body = cluster.api(leader, "POST", "/v1/jobs", {"name": "freeze", "tasks": [ticking_task("t", ticks_dir, 4)]})
    assert code == 201
    job_id = body["id"]
    first = wait_until(
        "first attempt running",
        lambda: next((a for a in cluster.job(job_id, leader)["tasks"][0]["attempts"] if a["state"] == "RUNNING"), None),
        20,
    )
    victim = first["agent_id"]
    assert victim != leader
    wait_until("first ticks", lambda: ticks(ticks_dir, first["id"]), 10)
    os.kill(cluster.pid(victim), signal.SIGSTOP)
    frozen_at = time.time()
    try:
        second = wait_until(
            "a replacement attempt",
            lambda: next((a for a in cluster.job(job_id, leader)["tasks"][0]["attempts"] if a["number"] == 2), None),
            30,
        )
        replaced_at = time.time()
    finally:
        os.kill(cluster.pid(victim), signal.SIGCONT)
    cluster.api(leader, "DELETE", f"/v1/agents/{leader}/drain")
    job = cluster.wait_job(job_id, timeout=60)
    attempts = job["tasks"][0]["attempts"]
    assert [a["state"] for a in attempts] == ["LOST", "FINISHED"], attempts
    assert second["agent_id"] != victim
    t1, t2 = ticks(ticks_dir, first["id"]), ticks(ticks_dir, second["id"])
    assert t1 and t2
    # the frozen node's task stopped ticking (its supervisor fenced it) before the replacement started
    assert max(t1) < min(t2), f"overlap: first attempt ticked until {max(t1)}, second started {min(t2)}"
    fenced_after = max(t1) - frozen_at
    assert fenced_after < 6.0, f"fencing took {fenced_after:.1f}s"
    print(f"fenced {fenced_after:.2f}s after the freeze; replaced {replaced_at - frozen_at:.2f}s after it")


def test_frozen_leader_launches_nothing_after_its_successor(cluster: LocalCluster) -> None:
    old = cluster.wait_ready()
    old_term = cluster.status(old)["term"]
    os.kill(cluster.pid(old), signal.SIGSTOP)
    try:
        others = [n for n in cluster.procs if n != old]
        new = cluster.wait_leader(nodes=others, timeout=30)
        assert new != old
        job_ids = []
        for i in range(5):
            code, body = cluster.api(
                new, "POST", "/v1/jobs", {"name": f"after-{i}", "tasks": [{"name": "t", "command": ["true"]}]}
            )
            assert code == 201
            job_ids.append(body["id"])
    finally:
        os.kill(cluster.pid(old), signal.SIGCONT)
    cluster.wait_ready()
    for job_id in job_ids:
        job = cluster.wait_job(job_id)
        for a in job["tasks"][0]["attempts"]:
            assert a["term"] > old_term, f"attempt {a['id']} launched with the deposed leader's term"
    cluster.wait_converged()


def test_rolling_kill_and_restart_under_load_loses_no_acknowledged_job(cluster: LocalCluster) -> None:
    acked: dict[str, str] = {}
    unknown: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set() and i < 200:
            key = f"load-{i}-{uuid.uuid4().hex[:6]}"
            spec = {
                "name": f"load-{i}",
                "tasks": [{"name": "a", "command": ["true"]}, {"name": "b", "command": ["true"], "depends_on": ["a"]}],
            }
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    acked[key] = cluster.client.submit(spec, key)
                    break
                except (ClientError, OSError):
                    time.sleep(0.2)  # same key again: at most one job results
            else:
                unknown.append(key)
            i += 1
            time.sleep(0.05)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        for node in sorted(cluster.procs):
            time.sleep(1.0)
            cluster.kill(node)
            time.sleep(1.0)
            cluster.start(only=[node])
            cluster.wait_ready(timeout=45)
    finally:
        stop.set()
        worker.join(60)
    assert len(acked) >= 10
    for key, job_id in acked.items():
        job = cluster.wait_job(job_id, timeout=90)
        assert job["state"] == "complete", (key, job)
    _, listing = cluster.api(next(iter(cluster.procs)), "GET", "/v1/jobs?limit=100000")
    names = [j["name"] for j in listing["jobs"]]
    assert len(names) == len(set(names)), "a retried submission produced two jobs"
    cluster.wait_converged()


def test_drain_with_deadline_reschedules_and_stops_offers(cluster: LocalCluster, tmp_path: Path) -> None:
    leader = cluster.wait_ready()
    ticks_dir = tmp_path / "ticks"
    code, body = cluster.api(leader, "POST", "/v1/jobs", {"name": "drain", "tasks": [ticking_task("t", ticks_dir, 6)]})
    job_id = body["id"]
    first = wait_until(
        "running",
        lambda: next((a for a in cluster.job(job_id)["tasks"][0]["attempts"] if a["state"] == "RUNNING"), None),
        20,
    )
    target = first["agent_id"]
    drain(cluster, leader, target, 2.0)
    _, agents = cluster.api(leader, "GET", "/v1/agents")
    assert next(a for a in agents["agents"] if a["id"] == target)["state"] == "draining"
    _, offers = cluster.api(leader, "GET", "/v1/offers")
    assert all(o["agent_id"] != target for o in offers["offers"])
    job = cluster.wait_job(job_id, timeout=40)
    attempts = job["tasks"][0]["attempts"]
    assert attempts[0]["state"] == "KILLED" and attempts[0]["kill_reason"] == "drain deadline passed"
    assert attempts[-1]["state"] == "FINISHED" and attempts[-1]["agent_id"] != target
    assert max(ticks(ticks_dir, attempts[0]["id"])) < min(ticks(ticks_dir, attempts[-1]["id"]))
    code, out = cluster.api(leader, "DELETE", f"/v1/agents/{target}/drain")
    assert code == 200 and out["state"] == "active"


def test_retry_reruns_only_unfinished_tasks_and_events_tell_the_story(cluster: LocalCluster, tmp_path: Path) -> None:
    node = next(iter(cluster.procs))
    flag = tmp_path / "flag"
    spec = {
        "name": "resume",
        "tasks": [
            {"name": "stage_in", "command": ["true"]},
            {"name": "submit", "command": ["test", "-f", str(flag)], "depends_on": ["stage_in"], "max_attempts": 1},
            {"name": "stage_out", "command": ["true"], "depends_on": ["submit"]},
        ],
    }
    code, body = cluster.api(node, "POST", "/v1/jobs", spec)
    job_id = body["id"]
    job = cluster.wait_job(job_id, ("failed",))
    states = {t["name"]: t["state"] for t in job["tasks"]}
    assert states == {"stage_in": "FINISHED", "submit": "FAILED", "stage_out": "PENDING"}
    flag.write_text("ok")
    code, out = cluster.api(node, "POST", f"/v1/jobs/{job_id}/retry", {})
    assert code == 200 and out["rerun"] == 2
    job = cluster.wait_job(job_id)
    by_name = {t["name"]: t for t in job["tasks"]}
    assert len(by_name["stage_in"]["attempts"]) == 1
    assert len(by_name["submit"]["attempts"]) == 2
    _, ev = cluster.api(node, "GET", f"/v1/jobs/{job_id}/events")
    kinds = [e["kind"] for e in ev["events"]]
    for k in ("job_submitted", "attempt_launched", "attempt_failed", "job_failed", "job_retried", "job_complete"):
        assert k in kinds
    indexes = [e["index"] for e in ev["events"]]
    assert indexes == sorted(indexes)
    code, err = cluster.api(node, "POST", f"/v1/jobs/{job_id}/retry", {})
    assert code == 409 and err["error"]["code"] == "conflict"
