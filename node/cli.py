"""``conclave``: run a node, run a local cluster, and talk to any node of a cluster.

Errors are one line on stderr with a non-zero exit status; no traceback reaches the user.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from node.client import Client, ClientError, Cluster

DEFAULT_DEV_DIR = ".conclave-dev"


def _cluster(args: argparse.Namespace) -> Cluster:
    token = args.token or os.environ.get("CONCLAVE_TOKEN")
    if args.url:
        return Cluster([u.rstrip("/") for u in args.url], token)
    path = args.cluster or os.environ.get("CONCLAVE_CLUSTER") or str(Path(DEFAULT_DEV_DIR) / "cluster.json")
    cluster = Cluster.from_file(path)
    if token:
        cluster.token = token
    return cluster


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def cmd_node(args: argparse.Namespace) -> int:
    if args.action:
        if args.action[0] == "drain" and len(args.action) == 2:
            client = Client(_cluster(args))
            _print(client.call("POST", f"/v1/agents/{args.action[1]}/drain", {"deadline_s": args.deadline}))
            return 0
        print("usage: conclave node --config FILE | conclave node drain NODE_ID [--deadline S]", file=sys.stderr)
        return 2
    if not args.config:
        print("error: conclave node needs --config FILE", file=sys.stderr)
        return 2
    from node.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format=f"%(asctime)s {config.node_id} %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    from node.daemon import run_node

    try:
        return run_node(config)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def cmd_dev(args: argparse.Namespace) -> int:
    from node.dev import run_dev

    if not 1 <= args.nodes <= 9:
        print("error: --nodes must be between 1 and 9", file=sys.stderr)
        return 2
    return run_dev(Path(args.dir).resolve(), args.nodes, [Path(p) for p in args.submit], args.exit)


def cmd_status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    client = Client(cluster, timeout=2.0)
    rows = []
    for url in cluster.urls:
        try:
            rows.append(client.status(url))
        except OSError as e:
            rows.append({"url": url, "error": str(getattr(e, "reason", e))})
    if args.json:
        _print(rows)
        return 0
    print(f"{'node':<6} {'role':<10} {'leader':<7} {'term':>5} {'applied':>8}  digest")
    for r in rows:
        if "error" in r:
            print(f"{r['url']}: unreachable ({r['error']})")
        else:
            print(
                f"{r['node_id']:<6} {r['role']:<10} {r['leader_id'] or '-':<7} {r['term']:>5} "
                f"{r['applied_index']:>8}  {r['state_digest'][:16]}"
            )
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from node.dev import render_job, watch_job
    from node.jobfile import JobFileError, load_job_file

    client = Client(_cluster(args))
    if args.job_cmd == "run":
        try:
            spec = load_job_file(Path(args.file))
        except JobFileError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        key = args.idempotency_key or uuid.uuid4().hex
        job_id = client.submit(spec, key)
        print(job_id)
        if args.wait:
            job = watch_job(client, job_id, args.timeout, out=sys.stderr)
            return 0 if job.get("state") == "complete" else 1
        return 0
    if args.job_cmd == "status":
        job = client.job(args.id)
        if args.json:
            _print(job)
        else:
            print(render_job(job))
        return 0
    if args.job_cmd == "cancel":
        _print(client.call("DELETE", f"/v1/jobs/{args.id}"))
        return 0
    if args.job_cmd == "retry":
        _print(client.call("POST", f"/v1/jobs/{args.id}/retry", {}, {"Idempotency-Key": uuid.uuid4().hex}))
        return 0
    if args.job_cmd == "events":
        for ev in client.call("GET", f"/v1/jobs/{args.id}/events")["events"]:
            print(f"{ev['index']:>7} {ev['time']:.3f} {ev['kind']:<18} {ev['task'] or '':<16} {ev['detail']}")
        return 0
    if args.job_cmd == "list":
        for j in client.call("GET", "/v1/jobs")["jobs"]:
            print(f"{j['id']}  {j['state']:<9}  {j['priority']:<6}  {j['name']}")
        return 0
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conclave", description="Conclave: a peer-to-peer cluster scheduler.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def client_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--cluster", help=f"cluster.json (default: $CONCLAVE_CLUSTER or {DEFAULT_DEV_DIR}/cluster.json)"
        )
        sp.add_argument("--url", action="append", help="a node's admin URL (repeatable); overrides --cluster")
        sp.add_argument("--token", help="bearer token for writes (default: from the cluster file or $CONCLAVE_TOKEN)")

    sp = sub.add_parser("node", help="run a node (--config FILE), or `node drain ID`")
    sp.add_argument("action", nargs="*", help="drain NODE_ID")
    sp.add_argument("--config", help="the node's TOML config")
    sp.add_argument("--log-level", default="info")
    sp.add_argument("--deadline", type=float, default=60.0, help="drain: seconds before running attempts are killed")
    client_opts(sp)
    sp.set_defaults(func=cmd_node)

    sp = sub.add_parser("dev", help="run a local cluster of N node processes on 127.0.0.1")
    sp.add_argument("--nodes", type=int, default=3)
    sp.add_argument("--dir", default=DEFAULT_DEV_DIR)
    sp.add_argument("--submit", action="append", default=[], metavar="FILE", help="submit and watch this job")
    sp.add_argument("--exit", action="store_true", help="stop the cluster after the submitted jobs end")
    sp.set_defaults(func=cmd_dev)

    sp = sub.add_parser("status", help="every node's view of the cluster")
    sp.add_argument("--json", action="store_true")
    client_opts(sp)
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("job", help="submit, watch, cancel and retry jobs")
    jsub = sp.add_subparsers(dest="job_cmd", required=True)
    r = jsub.add_parser("run", help="submit a job file (.json or .toml)")
    r.add_argument("file")
    r.add_argument("--wait", action="store_true", help="watch until the job ends; exit 0 only if it completed")
    r.add_argument("--timeout", type=float, default=600)
    r.add_argument("--idempotency-key", help="reuse to make a retried submission safe (default: a new one)")
    client_opts(r)
    for name in ("status", "cancel", "retry", "events"):
        s = jsub.add_parser(name)
        s.add_argument("id")
        if name == "status":
            s.add_argument("--json", action="store_true")
        client_opts(s)
    client_opts(jsub.add_parser("list"))
    sp.set_defaults(func=cmd_job)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
