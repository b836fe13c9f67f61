"""The run's history: client operations and nemesis events, one JSON object per line.

Client operations follow Jepsen's shape: an ``invoke`` entry, then exactly one completion with the same
``op`` number: ``ok`` (the server acknowledged), ``fail`` (definitely did not happen: refused before sending,
or a 4xx validation error) or ``info`` (unknown: a timeout or a 5xx after the request was sent). Every HTTP
request is its own operation; retries of one logical submission share its ``key`` (the Idempotency-Key) and
its job ``name``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

OK, FAIL, INFO, INVOKE = "ok", "fail", "info", "invoke"


class History:
    """Append-only, thread-safe recorder; mirrors every entry to a JSONL file when given one."""

    def __init__(self, path: Path | None = None) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._next_op = 0
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path else None

    def _append(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.entries.append(entry)
            if self._file is not None:
                self._file.write(json.dumps(entry, sort_keys=True) + "\n")
                self._file.flush()
        return entry

    def invoke(self, process: int, f: str, **value: Any) -> int:
        with self._lock:
            op = self._next_op
            self._next_op += 1
        self._append({"type": INVOKE, "op": op, "process": process, "f": f, "t": time.time(), **value})
        return op

    def complete(self, op: int, process: int, f: str, kind: str, **value: Any) -> None:
        assert kind in (OK, FAIL, INFO)
        self._append({"type": kind, "op": op, "process": process, "f": f, "t": time.time(), **value})

    def event(self, f: str, **value: Any) -> None:
        """A nemesis or harness event (``process`` is ``"nemesis"``)."""
        self._append({"type": "event", "process": "nemesis", "f": f, "t": time.time(), **value})

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def load(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


@dataclass
class Submission:
    """One logical job submission: every HTTP request that carried its Idempotency-Key."""

    key: str
    name: str
    outcome: str = FAIL
    ids: set[str] = field(default_factory=set)
    requests: int = 0
    invoked_at: float = 0.0


def pairs(entries: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """(invoke, completion) for every client operation; completion is None if the run ended first."""
    pending: dict[int, dict[str, Any]] = {}
    done: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for e in entries:
        if e.get("type") == INVOKE:
            pending[int(e["op"])] = e
            order.append(int(e["op"]))
        elif e.get("type") in (OK, FAIL, INFO):
            done[int(e["op"])] = e
    for op in order:
        yield pending[op], done.get(op)


def submissions(entries: Iterable[dict[str, Any]]) -> dict[str, Submission]:
    """Fold the history's submit operations into logical submissions keyed by job name.

    Outcome: ``ok`` if any request was acknowledged, else ``info`` if any was unknown (or never completed),
    else ``fail``.
    """
    rank = {FAIL: 0, INFO: 1, OK: 2}
    subs: dict[str, Submission] = {}
    for inv, comp in pairs(entries):
        if inv.get("f") != "submit":
            continue
        name = str(inv["name"])
        sub = subs.get(name)
        if sub is None:
            sub = subs[name] = Submission(key=str(inv["key"]), name=name, invoked_at=float(inv["t"]))
        sub.requests += 1
        kind = comp["type"] if comp is not None else INFO
        if kind == OK and comp is not None and comp.get("job_id"):
            sub.ids.add(str(comp["job_id"]))
        sub.outcome = kind if sub.requests == 1 else max(sub.outcome, kind, key=rank.__getitem__)
    return subs


def op_counts(entries: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = {OK: 0, FAIL: 0, INFO: 0}
    for _inv, comp in pairs(entries):
        counts[comp["type"] if comp is not None else INFO] += 1
    return counts
