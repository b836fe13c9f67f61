"""Job specs for the chaos workload (pure): small DAG workflows whose tasks run ``chaos/task.py``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TASK_TYPES = ("env_setup", "input_staging", "job_submission", "monitoring", "output_staging")
CPUS = (0.5, 1.0, 1.5)
MEM_MB = (128, 256, 512)


@dataclass(frozen=True)
class TaskCommand:
    """How a node should start ``chaos/task.py``: its interpreter, the script, and the records directory."""

    python: str
    script: str
    records_dir: str
    tick_s: float = 0.1

    def argv(self, cpus: float, mem: int, duration: float, exit_code: int) -> list[str]:
        return [
            self.python, "-S", self.script, "--dir", self.records_dir, "--cpus", f"{cpus:g}",
            "--mem", str(mem), "--duration", f"{duration:.2f}", "--tick", f"{self.tick_s:g}",
            "--exit", str(exit_code),
        ]


def make_job(
    rng: random.Random,
    name: str,
    cmd: TaskCommand,
    long_task_p: float = 0.1,
    fail_p: float = 0.05,
    types: Sequence[str] = TASK_TYPES,
) -> dict[str, Any]:
    """A workflow of 2-4 tasks with random DAG edges and resources big enough to oversubscribe an agent
    (1.5 cpus twice on a 2-cpu agent) if the scheduler ever double-booked."""
    n = rng.randint(2, 4)
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        deps = [f"t{j}" for j in range(i) if rng.random() < 0.45]
        cpus = rng.choice(CPUS)
        mem = rng.choice(MEM_MB)
        duration = rng.uniform(3.0, 6.0) if rng.random() < long_task_p else rng.uniform(0.3, 1.5)
        exit_code = 1 if rng.random() < fail_p else 0
        tasks.append(
            {
                "name": f"t{i}",
                "type": rng.choice(list(types)),
                "command": cmd.argv(cpus, mem, duration, exit_code),
                "resources": {"cpus": cpus, "mem_mb": mem, "disk_mb": 10},
                "depends_on": deps,
                "max_attempts": 3,
                "backoff_s": 0.5,
                "timeout_s": 60,
                "env": {},
                "constraints": {},
            }
        )
    return {
        "name": name,
        "priority": rng.choice(["NORMAL", "URGENT"]),
        "priority_value": rng.randint(0, 9),
        "not_before": None,
        "tasks": tasks,
    }


def long_job(name: str, cmd: TaskCommand, duration: float, cpus: float = 0.5, mem: int = 128) -> dict[str, Any]:
    """One long task (for the pause scenario: it must outlive the agent's lease)."""
    return {
        "name": name,
        "priority": "URGENT",
        "priority_value": 0,
        "not_before": None,
        "tasks": [
            {
                "name": "long",
                "type": "job_submission",
                "command": cmd.argv(cpus, mem, duration, 0),
                "resources": {"cpus": cpus, "mem_mb": mem, "disk_mb": 10},
                "depends_on": [],
                "max_attempts": 5,
                "backoff_s": 0.2,
                "timeout_s": 600,
                "env": {},
                "constraints": {},
            }
        ],
    }
