"""Job specifications: parsing and validation of what users submit.

Pure and deterministic: the admin API calls :func:`parse_job` to answer 400 early, and the state machine calls
the same function inside ``apply`` so that every replica accepts or rejects a submission identically.
CPU is held in millicpus so that resource arithmetic is exact integer arithmetic on every replica.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
PRIORITY_CLASSES = ("URGENT", "NORMAL")  # index = rank: URGENT first
MAX_TASKS = 10_000
MAX_ATTEMPTS = 100
MAX_ARGV = 256
MAX_ARG_LEN = 65_536
DEFAULT_RESOURCES = {"cpus": 0.2, "mem_mb": 128, "disk_mb": 10}  # Airavata's per-experiment defaults


class SpecError(ValueError):
    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Resources:
    cpus_m: int  # millicpus
    mem_mb: int
    disk_mb: int

    def fits_in(self, other: Resources) -> bool:
        return self.cpus_m <= other.cpus_m and self.mem_mb <= other.mem_mb and self.disk_mb <= other.disk_mb

    def __add__(self, o: Resources) -> Resources:
        return Resources(self.cpus_m + o.cpus_m, self.mem_mb + o.mem_mb, self.disk_mb + o.disk_mb)

    def __sub__(self, o: Resources) -> Resources:
        return Resources(self.cpus_m - o.cpus_m, self.mem_mb - o.mem_mb, self.disk_mb - o.disk_mb)

    def is_zero_or_negative(self) -> bool:
        return self.cpus_m <= 0 and self.mem_mb <= 0 and self.disk_mb <= 0

    def to_wire(self) -> list[int]:
        return [self.cpus_m, self.mem_mb, self.disk_mb]

    @staticmethod
    def from_wire(w: list[int]) -> Resources:
        return Resources(int(w[0]), int(w[1]), int(w[2]))

    def to_json(self) -> dict[str, float | int]:
        return {"cpus": self.cpus_m / 1000, "mem_mb": self.mem_mb, "disk_mb": self.disk_mb}


ZERO = Resources(0, 0, 0)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    command: tuple[str, ...]
    resources: Resources
    type: str | None
    constraints: tuple[tuple[str, str], ...]
    depends_on: tuple[str, ...]
    max_attempts: int
    backoff_ms: int
    timeout_ms: int | None
    env: tuple[tuple[str, str], ...]

    def to_wire(self) -> list[Any]:
        return [
            self.name,
            list(self.command),
            self.resources.to_wire(),
            self.type,
            [list(c) for c in self.constraints],
            list(self.depends_on),
            self.max_attempts,
            self.backoff_ms,
            self.timeout_ms,
            [list(e) for e in self.env],
        ]

    @staticmethod
    def from_wire(w: list[Any]) -> TaskSpec:
        return TaskSpec(
            name=w[0],
            command=tuple(w[1]),
            resources=Resources.from_wire(w[2]),
            type=w[3],
            constraints=tuple((a, b) for a, b in w[4]),
            depends_on=tuple(w[5]),
            max_attempts=w[6],
            backoff_ms=w[7],
            timeout_ms=w[8],
            env=tuple((a, b) for a, b in w[9]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "command": list(self.command),
            "resources": self.resources.to_json(),
            "constraints": dict(self.constraints),
            "depends_on": list(self.depends_on),
            "max_attempts": self.max_attempts,
            "backoff_s": self.backoff_ms / 1000,
            "timeout_s": None if self.timeout_ms is None else self.timeout_ms / 1000,
            "env": dict(self.env),
        }


@dataclass(frozen=True, slots=True)
class JobSpec:
    name: str
    priority_class: int  # 0 = URGENT, 1 = NORMAL
    priority_value: int  # higher runs first within a class
    not_before_ms: int | None
    tasks: tuple[TaskSpec, ...]

    def to_wire(self) -> list[Any]:
        return [
            self.name,
            self.priority_class,
            self.priority_value,
            self.not_before_ms,
            [t.to_wire() for t in self.tasks],
        ]

    @staticmethod
    def from_wire(w: list[Any]) -> JobSpec:
        return JobSpec(w[0], w[1], w[2], w[3], tuple(TaskSpec.from_wire(t) for t in w[4]))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "priority": PRIORITY_CLASSES[self.priority_class],
            "priority_value": self.priority_value,
            "not_before": None if self.not_before_ms is None else self.not_before_ms / 1000,
            "tasks": [t.to_json() for t in self.tasks],
        }


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _int(v: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError("expected an integer", field)
    if not lo <= v <= hi:
        raise SpecError(f"must be between {lo} and {hi}", field)
    return v


def _seconds_ms(v: Any, field: str, lo_ms: int, hi_ms: int) -> int:
    if not _is_num(v):
        raise SpecError("expected a number of seconds", field)
    ms = round(v * 1000)
    if not lo_ms <= ms <= hi_ms:
        raise SpecError(f"must be between {lo_ms / 1000} and {hi_ms / 1000} seconds", field)
    return int(ms)


def _str_map(v: Any, field: str) -> tuple[tuple[str, str], ...]:
    if v is None:
        return ()
    if not isinstance(v, dict):
        raise SpecError("expected an object of strings", field)
    out = []
    for k in sorted(v):
        val = v[k]
        if not isinstance(k, str) or not isinstance(val, str):
            raise SpecError("expected an object of strings", field)
        out.append((k, val))
    return tuple(out)


def parse_resources(v: Any, field: str) -> Resources:
    if v is None:
        v = {}
    if not isinstance(v, dict):
        raise SpecError("expected an object with cpus, mem_mb, disk_mb", field)
    unknown = set(v) - {"cpus", "mem_mb", "disk_mb"}
    if unknown:
        raise SpecError(f"unknown key(s) {sorted(unknown)}", field)
    vals: dict[str, float] = {}
    for key in ("cpus", "mem_mb", "disk_mb"):
        x = v.get(key, DEFAULT_RESOURCES[key])
        if not _is_num(x):
            raise SpecError("expected a number", f"{field}.{key}")
        if x < 0:
            raise SpecError("must not be negative", f"{field}.{key}")
        if x > 1_000_000:
            raise SpecError("is implausibly large", f"{field}.{key}")
        vals[key] = float(x)
    return Resources(round(vals["cpus"] * 1000), round(vals["mem_mb"]), round(vals["disk_mb"]))


_TASK_KEYS = {
    "name",
    "type",
    "command",
    "resources",
    "constraints",
    "depends_on",
    "max_attempts",
    "backoff_s",
    "timeout_s",
    "env",
}
_JOB_KEYS = {"name", "priority", "priority_value", "not_before", "tasks"}


def parse_task(v: Any, field: str) -> TaskSpec:
    if not isinstance(v, dict):
        raise SpecError("expected an object", field)
    unknown = set(v) - _TASK_KEYS
    if unknown:
        raise SpecError(f"unknown key(s) {sorted(unknown)}", field)
    name = v.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(f"expected a name matching {NAME_RE.pattern}", f"{field}.name")
    cmd = v.get("command")
    if not isinstance(cmd, list) or not cmd or len(cmd) > MAX_ARGV:
        raise SpecError(f"expected a non-empty argv list (at most {MAX_ARGV} items)", f"{field}.command")
    for i, a in enumerate(cmd):
        if not isinstance(a, str) or len(a) > MAX_ARG_LEN or "\x00" in a:
            raise SpecError("expected a string without NUL bytes", f"{field}.command[{i}]")
    if not cmd[0]:
        raise SpecError("the program must not be empty", f"{field}.command[0]")
    ttype = v.get("type")
    if ttype is not None and (not isinstance(ttype, str) or not NAME_RE.match(ttype)):
        raise SpecError(f"expected a task type matching {NAME_RE.pattern}", f"{field}.type")
    deps = v.get("depends_on", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise SpecError("expected a list of task names", f"{field}.depends_on")
    if len(set(deps)) != len(deps):
        raise SpecError("lists a dependency twice", f"{field}.depends_on")
    timeout = v.get("timeout_s")
    return TaskSpec(
        name=name,
        command=tuple(cmd),
        resources=parse_resources(v.get("resources"), f"{field}.resources"),
        type=ttype,
        constraints=_str_map(v.get("constraints"), f"{field}.constraints"),
        depends_on=tuple(deps),
        max_attempts=_int(v.get("max_attempts", 3), f"{field}.max_attempts", 1, MAX_ATTEMPTS),
        backoff_ms=_seconds_ms(v.get("backoff_s", 1.0), f"{field}.backoff_s", 0, 3_600_000),
        timeout_ms=None if timeout is None else _seconds_ms(timeout, f"{field}.timeout_s", 1, 7 * 86_400_000),
        env=_str_map(v.get("env"), f"{field}.env"),
    )


def parse_job(v: Any) -> JobSpec:
    """Validate a job as submitted (JSON-shaped), raising :class:`SpecError` with the offending field."""
    if not isinstance(v, dict):
        raise SpecError("a job must be a JSON object")
    unknown = set(v) - _JOB_KEYS
    if unknown:
        raise SpecError(f"unknown key(s) {sorted(unknown)}")
    name = v.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(f"expected a name matching {NAME_RE.pattern}", "name")
    prio = v.get("priority", "NORMAL")
    if not isinstance(prio, str) or prio.upper() not in PRIORITY_CLASSES:
        raise SpecError("expected URGENT or NORMAL", "priority")
    pval = _int(v.get("priority_value", 0), "priority_value", -1_000_000, 1_000_000)
    nb = v.get("not_before")
    not_before_ms: int | None = None
    if nb is not None:
        if not _is_num(nb) or nb < 0 or nb > 1e11:
            raise SpecError("expected a Unix time in seconds", "not_before")
        not_before_ms = round(nb * 1000)
    tasks_raw = v.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise SpecError("expected a non-empty list of tasks", "tasks")
    if len(tasks_raw) > MAX_TASKS:
        raise SpecError(f"at most {MAX_TASKS} tasks per job", "tasks")
    tasks = tuple(parse_task(t, f"tasks[{i}]") for i, t in enumerate(tasks_raw))
    names = {t.name for t in tasks}
    if len(names) != len(tasks):
        raise SpecError("task names must be unique", "tasks")
    for i, t in enumerate(tasks):
        for d in t.depends_on:
            if d not in names:
                raise SpecError(f"unknown dependency {d!r}", f"tasks[{i}].depends_on")
            if d == t.name:
                raise SpecError("a task cannot depend on itself", f"tasks[{i}].depends_on")
    cycle = find_cycle(tasks)
    if cycle:
        raise SpecError("dependency cycle: " + " -> ".join(cycle), "tasks")
    return JobSpec(name, PRIORITY_CLASSES.index(prio.upper()), pval, not_before_ms, tasks)


def find_cycle(tasks: tuple[TaskSpec, ...]) -> list[str]:
    """Return one dependency cycle as a list of names (first == last), or [] if the graph is a DAG."""
    deps = {t.name: t.depends_on for t in tasks}
    color: dict[str, int] = {}
    for root in deps:
        if color.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                color[node] = 1
                path.append(node)
            children = deps[node]
            if i < len(children):
                stack.append((node, i + 1))
                child = children[i]
                c = color.get(child, 0)
                if c == 1:
                    return [*path[path.index(child) :], child]
                if c == 0:
                    stack.append((child, 0))
            else:
                color[node] = 2
                path.pop()
    return []
