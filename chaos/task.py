"""The command every chaos task runs: records when this attempt executed, then exits.

Usage: ``python task.py --dir DIR --cpus C --mem M --duration S [--tick T] [--exit CODE]``

Standalone on purpose (standard library only, no imports from the repository): the node runs it as a task
with its own interpreter. It first drops libfaketime from its environment (re-executing itself) so that the
times it writes come from the real machine clock even on a node whose clock is skewed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time

_STRIP = ("LD_PRELOAD", "FAKETIME", "FAKETIME_TIMESTAMP_FILE", "FAKETIME_NO_CACHE", "FAKETIME_DONT_FAKE_MONOTONIC")


def _clean_env() -> None:
    if any(k in os.environ for k in _STRIP):
        env = {k: v for k, v in os.environ.items() if k not in _STRIP}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:80] or "x"


def main() -> int:
    _clean_env()
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--cpus", type=float, required=True)
    ap.add_argument("--mem", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--tick", type=float, default=0.1)
    ap.add_argument("--exit", type=int, default=0)
    args = ap.parse_args()
    env = os.environ
    job = env.get("CONCLAVE_JOB_ID", "")
    task = env.get("CONCLAVE_TASK_NAME", "")
    attempt = env.get("CONCLAVE_ATTEMPT_ID", "")
    agent = env.get("CONCLAVE_AGENT_ID", "")
    pid = os.getpid()
    path = os.path.join(args.dir, f"{_safe(job)}.{_safe(task)}.{_safe(attempt)}.{pid}.jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(ev: str, **extra: object) -> None:
        line = json.dumps({"ev": ev, "t": time.time(), **extra}) + "\n"
        os.write(fd, line.encode())

    def on_term(signum: int, _frame: object) -> None:
        record("term", signal=signum)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    record("start", pid=pid, job=job, task=task, attempt=attempt, agent=agent, cpus=args.cpus, mem=args.mem,
           sandbox=env.get("CONCLAVE_SANDBOX", ""))
    # Progress is counted in ticks, not wall time: a stopped task resumes with the work it had left.
    for _ in range(max(1, round(args.duration / args.tick))):
        time.sleep(args.tick)
        record("tick")
    record("end", exit=args.exit)
    os.close(fd)
    return int(args.exit)


if __name__ == "__main__":
    sys.exit(main())
