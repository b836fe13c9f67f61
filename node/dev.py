"""``conclave dev``: a local cluster of N separate node processes on 127.0.0.1.

The first run picks free ports and writes each node's config and ``DIR/cluster.json``; a later run on the same
directory reuses them, so the cluster resumes with its jobs. It stays in the foreground and stops every process
it started on Ctrl-C or SIGTERM (the nodes also die with it if it is killed: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node.client import Client, ClientError, Cluster

PR_SET_PDEATHSIG = 1


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def node_config_toml(
    node_id: str,
    data_dir: Path,
    raft_port: int,
    api_port: int,
    peers: list[dict[str, Any]],
    token: str,
    secret: str,
    extra: str = "",
    durable: bool = True,
    node_extra: str = "",
) -> str:
    lines = [
        "[node]",
        f'id = "{node_id}"',
        f'data_dir = "{data_dir}"',
        f'raft_address = "127.0.0.1:{raft_port}"',
        f'api_address = "127.0.0.1:{api_port}"',
        f"durable = {'true' if durable else 'false'}",
        node_extra,
        "",
        "[cluster]",
        f'token = "{token}"',
        f'secret = "{secret}"',
    ]
    for p in peers:
        lines += [
            "",
            "[[cluster.peers]]",
            f'id = "{p["id"]}"',
            f'raft_address = "{p["raft"]}"',
            f'api_url = "{p["url"]}"',
        ]
    lines += ["", "[agent]", "enabled = true", "cpus = 2.0", "mem_mb = 2048", "disk_mb = 10240", ""]
    return "\n".join(lines) + extra


def prepare(directory: Path, nodes: int, durable: bool = True, extra: str = "", node_extra: str = "") -> dict[str, Any]:
    """Create (or load) the layout of a dev cluster in ``directory``.

    ``node_extra`` is TOML added to each config's ``[node]`` table, ``extra`` is appended at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / "dev.json"
    if meta_path.exists():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if len(meta["nodes"]) != nodes:
            print(f"note: {directory} holds a {len(meta['nodes'])}-node cluster; resuming it as it is")
        return meta
    ports = _free_ports(2 * nodes)
    token = secrets.token_urlsafe(24)
    secret = secrets.token_urlsafe(24)
    peers = [
        {
            "id": f"n{i + 1}",
            "raft": f"127.0.0.1:{ports[2 * i]}",
            "url": f"http://127.0.0.1:{ports[2 * i + 1]}",
        }
        for i in range(nodes)
    ]
    for i, p in enumerate(peers):
        ndir = directory / p["id"]
        ndir.mkdir(exist_ok=True)
        cfg = node_config_toml(
            p["id"], ndir / "data", ports[2 * i], ports[2 * i + 1], peers, token, secret, extra, durable, node_extra
        )
        (ndir / "conclave.toml").write_text(cfg)
        os.chmod(ndir / "conclave.toml", 0o600)
    meta = {"nodes": peers, "token": token}
    meta_path.write_text(json.dumps(meta, indent=2))
    cluster = {"nodes": [{"id": p["id"], "url": p["url"]} for p in peers], "token": token}
    (directory / "cluster.json").write_text(json.dumps(cluster, indent=2))
    os.chmod(directory / "cluster.json", 0o600)
    return meta


def start_nodes(
    directory: Path, meta: dict[str, Any], env: dict[str, str] | None = None
) -> dict[str, subprocess.Popen[bytes]]:
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for p in meta["nodes"]:
        ndir = directory / p["id"]
        logf = open(ndir / "node.log", "ab")
        procs[p["id"]] = subprocess.Popen(
            [sys.executable, "-m", "node", "node", "--config", str(ndir / "conclave.toml")],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            env={**os.environ, **(env or {})},
        )
        logf.close()
    return procs


def stop_nodes(procs: dict[str, subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for_leader(cluster: Cluster, timeout: float) -> str | None:
    client = Client(cluster, timeout=1.0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders: set[str | None] = set()
        acting = False
        for url in cluster.urls:
            try:
                st = client.status(url)
            except OSError:
                leaders.add(None)
                continue
            leaders.add(st.get("leader_id"))
            acting = acting or bool(st.get("acting_leader"))
        if len(leaders) == 1 and None not in leaders and acting:
            return str(leaders.pop())
        time.sleep(0.1)
    return None


def render_job(job: dict[str, Any]) -> str:
    lines = [f"job {job['id']} ({job['name']}, {job['priority']}): {job['state']}"]
    for t in job["tasks"]:
        att = t["attempts"][-1] if t["attempts"] else None
        where = f" on {att['agent_id']}" if att else ""
        tries = f" (attempt {len(t['attempts'])})" if len(t["attempts"]) > 1 else ""
        code = f" exit {att['exit_code']}" if att and att["exit_code"] is not None else ""
        lines.append(f"  {t['name']:<16} {t['state']:<9}{where}{tries}{code}")
    return "\n".join(lines)


def watch_job(client: Client, job_id: str, timeout: float, out: Any = sys.stdout) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = client.job(job_id)
        except ClientError as e:
            print(f"  (waiting: {e})", file=out)
            time.sleep(0.5)
            continue
        view = render_job(job)
        if view != last:
            print(time.strftime("%H:%M:%S"), view, sep="  ", file=out, flush=True)
            last = view
        if job["state"] in ("complete", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    return job


def run_dev(directory: Path, nodes: int, submit: list[Path], exit_after: bool) -> int:
    from node.jobfile import JobFileError, load_job_file

    specs = []
    for path in submit:
        try:
            specs.append(load_job_file(path))
        except JobFileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    meta = prepare(directory, nodes)
    cluster = Cluster.from_file(directory / "cluster.json")
    stop = {"now": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs = start_nodes(directory, meta)
    print(f"started {len(procs)} nodes: " + ", ".join(f"{k} (pid {p.pid})" for k, p in procs.items()))
    print(f"cluster file: {directory / 'cluster.json'}  (logs: {directory}/n*/node.log)")
    code = 0
    try:
        leader = wait_for_leader(cluster, 30)
        if leader is None:
            print("error: no leader within 30 s; see the node logs", file=sys.stderr)
            return 1
        print(f"leader: {leader}")
        client = Client(cluster)
        for spec in specs:
            job_id = client.submit(spec)
            print(f"submitted {spec['name']} as job {job_id}; watching it (Ctrl-C stops the cluster)")
            job = watch_job(client, job_id, 300)
            if job.get("state") != "complete":
                code = 1
        if exit_after:
            return code
        for url in cluster.urls:
            print(f"  admin API: {url}")
        print("cluster running; try `.venv/bin/conclave status` in another terminal; Ctrl-C stops it")
        while not stop["now"]:
            for node_id, proc in procs.items():
                if proc.poll() is not None:
                    print(f"node {node_id} exited with {proc.returncode}; see {directory / node_id / 'node.log'}")
                    return 1
            time.sleep(0.2)
        return code
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        print("stopping nodes ...")
        stop_nodes(procs)
        print("stopped")
