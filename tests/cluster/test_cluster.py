"""Three real node processes on loopback."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from node.localcluster import LocalCluster, pid_alive, sleep_job, wait_until

pytestmark = pytest.mark.cluster


def followers(c: LocalCluster, leader: str) -> list[str]:
    return [n for n in c.procs if n != leader]


def test_job_through_a_follower_completes_and_replicas_agree(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    follower = followers(cluster, leader)[0]
    code, body = cluster.api(follower, "POST", "/v1/jobs", sleep_job("via-follower", 0.1, tasks=3))
    assert code == 201, body
    # read-your-write on the node that acknowledged it
    assert cluster.job(body["id"], follower)["state"] in ("pending", "running")
    job = cluster.wait_job(body["id"])
    assert [t["state"] for t in job["tasks"]] == ["FINISHED"] * 3
    for t in job["tasks"]:
        assert t["attempts"][-1]["exit_code"] == 0 and t["attempts"][-1]["finished_at"] is not None
    index, digest = cluster.wait_converged()
    assert index > 0 and len(digest) == 64


def test_idempotency_key_makes_a_retried_submission_safe(cluster: LocalCluster) -> None:
    nodes = list(cluster.procs)
    spec = sleep_job("idem", 0)
    ids = set()
    for node in nodes:
        code, body = cluster.api(node, "POST", "/v1/jobs", spec, headers={"Idempotency-Key": "k-123"})
        assert code == 201
        ids.add(body["id"])
    assert len(ids) == 1
    _, listing = cluster.api(nodes[0], "GET", "/v1/jobs")
    assert sum(1 for j in listing["jobs"] if j["name"] == "idem") == 1


def test_sigkill_of_the_leader_mid_job(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    other = followers(cluster, leader)[0]
    code, body = cluster.api(other, "POST", "/v1/jobs", sleep_job("failover", 1.0, tasks=3))
    assert code == 201
    job_id = body["id"]
    wait_until(
        "a task running",
        lambda: any(t["state"] == "RUNNING" for t in cluster.job(job_id, other)["tasks"]),
        20,
    )
    cluster.kill(leader)
    new_leader = cluster.wait_leader(timeout=30)
    assert new_leader != leader
    job = cluster.wait_job(job_id, timeout=60)
    assert all(t["state"] == "FINISHED" for t in job["tasks"])
    # the killed node's attempts were LOST and retried elsewhere; nothing was silently forgotten
    for t in job["tasks"]:
        for a in t["attempts"][:-1]:
            assert a["state"] in ("LOST", "FAILED", "KILLED")
    cluster.start(only=[leader])
    cluster.wait_ready()
    cluster.wait_converged()


def test_whole_cluster_restart_keeps_every_job(cluster: LocalCluster) -> None:
    ids = []
    for i in range(5):
        code, body = cluster.api(list(cluster.procs)[i % 3], "POST", "/v1/jobs", sleep_job(f"keep-{i}", 0))
        assert code == 201
        ids.append(body["id"])
    for job_id in ids[:3]:
        cluster.wait_job(job_id)
    before = {j: cluster.job(j)["state"] for j in ids}
    for node in list(cluster.procs):
        cluster.kill(node)
    cluster.start()
    cluster.wait_leader()
    for job_id in ids:
        job = cluster.wait_job(job_id, timeout=60)
        assert job["state"] == "complete"
    assert all(before[j] == "complete" for j in ids[:3])


def test_cancel_kills_running_attempts(cluster: LocalCluster) -> None:
    node = next(iter(cluster.procs))
    code, body = cluster.api(node, "POST", "/v1/jobs", sleep_job("cancel-me", 60, tasks=2))
    job_id = body["id"]
    wait_until("running", lambda: cluster.job(job_id)["tasks"][0]["state"] == "RUNNING", 20)
    code, out = cluster.api(node, "DELETE", f"/v1/jobs/{job_id}")
    assert code == 200 and out["state"] == "cancelled"
    job = cluster.wait_job(job_id, ("cancelled",))
    wait_until("attempt killed", lambda: cluster.job(job_id)["tasks"][0]["state"] == "KILLED", 15)
    assert cluster.job(job_id)["tasks"][1]["state"] == "KILLED" and job["state"] == "cancelled"
    # events record the whole story
    _, ev = cluster.api(node, "GET", f"/v1/jobs/{job_id}/events")
    kinds = [e["kind"] for e in ev["events"]]
    assert kinds[0] == "job_submitted" and "job_cancelled" in kinds and "attempt_killed" in kinds


def test_no_quorum_answers_503_quickly_and_recovers(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    survivor = followers(cluster, leader)[0]
    stopped = [n for n in list(cluster.procs) if n != survivor]
    for node in stopped:
        cluster.terminate(node)
    t0 = time.monotonic()
    code, body = cluster.api(survivor, "POST", "/v1/jobs", sleep_job("no-quorum", 0))
    elapsed = time.monotonic() - t0
    assert code == 503, body
    assert body["error"]["code"] in ("no_leader", "no_quorum")
    # answered at once, not after request_timeout_s (5 s) of waiting for a commit that cannot happen
    assert elapsed < 4.0, f"503 took {elapsed:.1f}s"
    spec = json.dumps(sleep_job("no-quorum-2", 0)).encode()
    req = urllib.request.Request(cluster.urls[survivor] + "/v1/jobs", data=spec, method="POST")
    req.add_header("Authorization", f"Bearer {cluster.token}")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("expected 503")
    except urllib.error.HTTPError as e:
        assert e.code == 503 and e.headers["Retry-After"] == "1"
    code, st = cluster.api(survivor, "GET", "/v1/status")
    assert code == 200 and st["has_quorum"] is False and st["last_apply_age_s"] >= 0
    cluster.start(only=stopped)
    cluster.wait_ready()
    code, body = cluster.api(survivor, "POST", "/v1/jobs", sleep_job("after-recovery", 0))
    assert code == 201, body
    cluster.wait_job(body["id"])


def test_bad_input_gets_clear_4xx_and_changes_nothing(cluster: LocalCluster) -> None:
    node = next(iter(cluster.procs))
    _, before = cluster.api(node, "GET", "/v1/jobs")
    good = sleep_job("x", 0)
    cases = [
        ({"body": b"{not json"}, 400, "invalid_json"),
        ({"body": {"name": 5, "tasks": []}}, 400, "invalid_spec"),
        (
            {"body": {**good, "tasks": [{"name": "a", "command": ["x"], "depends_on": ["a"]}]}},
            400,
            "invalid_spec",
        ),
        (
            {
                "body": {
                    **good,
                    "tasks": [
                        {"name": "a", "command": ["x"], "depends_on": ["b"]},
                        {"name": "b", "command": ["x"], "depends_on": ["a"]},
                    ],
                }
            },
            400,
            "invalid_spec",
        ),
        (
            {"body": {**good, "tasks": [{"name": "a", "command": ["x"], "depends_on": ["zz"]}]}},
            400,
            "invalid_spec",
        ),
        (
            {"body": {**good, "tasks": [{"name": "a", "command": ["x"], "resources": {"cpus": -1}}]}},
            400,
            "invalid_spec",
        ),
        ({"body": {**good, "tasks": [{"name": "a", "command": "x"}]}}, 400, "invalid_spec"),
        ({"body": good, "token": None}, 401, "unauthorized"),
        ({"body": good, "token": "wrong-token-value"}, 401, "unauthorized"),
        (
            {"body": {"name": "big", "tasks": [{"name": "a", "command": ["x" * (1100 * 1024)]}]}},
            413,
            "too_large",
        ),
    ]
    for case, status, code_name in cases:
        raw = case["body"] if isinstance(case["body"], bytes) else json.dumps(case["body"]).encode()
        req = urllib.request.Request(cluster.urls[node] + "/v1/jobs", data=raw, method="POST")
        token = case.get("token", cluster.token)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                got, payload = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            got, payload = e.code, json.loads(e.read())
        assert got == status, (case, payload)
        assert payload["error"]["code"] == code_name and payload["error"]["message"]
    for method, path in [
        ("DELETE", "/v1/jobs/nope"),
        ("POST", "/v1/agents/n1/drain"),
        ("POST", "/v1/jobs/x/retry"),
    ]:
        code, payload = cluster.api(node, method, path, token=None)
        assert code == 401 and payload["error"]["code"] == "unauthorized"
    code, payload = cluster.api(node, "DELETE", "/v1/jobs/does-not-exist")
    assert code == 404 and payload["error"]["code"] == "not_found"
    code, payload = cluster.api(node, "GET", "/v1/jobs/does-not-exist")
    assert code == 404
    _, after = cluster.api(node, "GET", "/v1/jobs")
    assert after == before


def test_agents_offers_and_status_fields(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    st = cluster.status(leader, digest=True)
    assert {"node_id", "role", "leader_id", "term", "applied_index", "state_digest"} <= set(st)
    assert st["role"] == "leader" and st["leader_id"] == leader and len(st["state_digest"]) == 64
    assert st["durable"] is True and st["journal_syncs"] > 0  # the journal is flushed before acks
    code, agents = cluster.api(leader, "GET", "/v1/agents")
    assert code == 200 and {a["id"] for a in agents["agents"]} == set(cluster.procs)
    for a in agents["agents"]:
        assert a["state"] == "active" and a["total"]["cpus"] == 2.0 and "used" in a
    code, offers = cluster.api(leader, "GET", "/v1/offers")
    assert code == 200 and offers["leader"] is True


def test_tasks_die_with_their_node(cluster: LocalCluster) -> None:
    node = next(iter(cluster.procs))
    _code, body = cluster.api(node, "POST", "/v1/jobs", sleep_job("orphan-check", 120, tasks=1))
    job_id = body["id"]
    wait_until("running", lambda: cluster.job(job_id)["tasks"][0]["state"] == "RUNNING", 20)
    where = cluster.job(job_id)["tasks"][0]["attempts"][-1]["agent_id"]
    pids_before = cluster.alive_pids_of_tasks()
    assert pids_before
    cluster.kill(where)
    wait_until(
        "supervisors of the killed node gone",
        lambda: not any(pid_alive(p) for p in pids_before if str(where) in _cmdline(p)) or None,
        10,
    )


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_raft_port_refuses_unauthenticated_bytes(cluster: LocalCluster, tmp_path: Path) -> None:
    """pysyncobj unpickles what reaches its port; with the cluster secret set, forged frames are dropped."""
    import pickle
    import socket
    import struct
    import zlib

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    frame = zlib.compress(pickle.dumps(Exploit()))
    node = next(iter(cluster.procs))
    peer = next(p for p in cluster.meta["nodes"] if p["id"] == node)
    host, port = peer["raft"].rsplit(":", 1)
    for payload in (struct.pack("i", len(frame)) + frame, b"\x10\x00\x00\x00" + b"\x00" * 16):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(payload)
            # the node reads the frame, fails to authenticate it and hangs up: that is our synchronization point
            try:
                assert s.recv(1024) == b""
            except ConnectionResetError:
                pass
    assert not marker.exists()
    cluster.wait_ready()
