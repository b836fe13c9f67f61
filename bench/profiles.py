"""Benchmark sizes. ``smoke`` is what CI runs (well under a minute on 2 cores); ``full`` is the issue's target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    # 1. pure core
    core_agents: int
    core_jobs: int
    core_tasks_per_job: int
    # shared cluster: simulated agents per node
    agents_per_node: int
    # 2. replicated throughput
    tp_jobs: int
    tp_tasks_per_job: int
    # 3. latency
    rates: tuple[int, ...]
    rate_duration_s: float
    sequential: int
    # 4. failover
    failover_trials: int
    # 5. C1M-style run
    c1m_jobs: int
    c1m_tasks_per_job: int
    c1m_agents: int  # total over the three nodes
    c1m_timeout_s: float
    # 6. soak
    soak_s: float
    soak_jobs_per_s: float
    soak_tasks_per_job: int


PROFILES = {
    "smoke": Profile(
        name="smoke",
        core_agents=30,
        core_jobs=10,
        core_tasks_per_job=2_000,
        agents_per_node=10,
        tp_jobs=4,
        tp_tasks_per_job=1_000,
        rates=(100, 1000),
        rate_duration_s=0.5,
        sequential=20,
        failover_trials=2,
        c1m_jobs=10,
        c1m_tasks_per_job=200,
        c1m_agents=30,
        c1m_timeout_s=30,
        soak_s=4.0,
        soak_jobs_per_s=50,
        soak_tasks_per_job=5,
    ),
    "quick": Profile(
        name="quick",
        core_agents=300,
        core_jobs=50,
        core_tasks_per_job=4_000,
        agents_per_node=100,
        tp_jobs=10,
        tp_tasks_per_job=5_000,
        rates=(100, 1000),
        rate_duration_s=8.0,
        sequential=200,
        failover_trials=20,
        c1m_jobs=100,
        c1m_tasks_per_job=1_000,
        c1m_agents=500,
        c1m_timeout_s=300,
        soak_s=60.0,
        soak_jobs_per_s=100,
        soak_tasks_per_job=10,
    ),
    "full": Profile(
        name="full",
        core_agents=5_000,
        core_jobs=1_000,
        core_tasks_per_job=1_000,
        agents_per_node=100,
        tp_jobs=50,
        tp_tasks_per_job=10_000,
        rates=(100, 1000),
        rate_duration_s=20.0,
        sequential=200,
        failover_trials=30,
        c1m_jobs=1_000,
        c1m_tasks_per_job=1_000,
        c1m_agents=5_000,
        c1m_timeout_s=900,
        soak_s=300.0,
        soak_jobs_per_s=100,
        soak_tasks_per_job=10,
    ),
}
