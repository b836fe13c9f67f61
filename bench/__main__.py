"""``python -m bench run --profile smoke|quick|full``: run the suite, write results under bench/results/<timestamp>/."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import report
from bench.core import run_core
from bench.harness import BenchCluster
from bench.profiles import PROFILES, Profile
from bench.scenarios import c1m, failover, open_loop, sequential, soak, throughput
from bench.stats import machine_facts, progress

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("core", "throughput", "latency", "failover", "soak", "c1m")


def _extrapolate(c: dict[str, Any]) -> str | None:
    if c["tasks"] >= 1_000_000 or not c.get("all_placed_s"):
        return None
    if c["tasks"] < 50_000:
        return "not extrapolated: too small a run (fixed costs dominate)"
    k = 1_000_000 / c["tasks"]
    return (
        f"linear in tasks (x{k:.0f}): all placed in about {c['all_placed_s'] * k:,.0f} s; an estimate, not a "
        "measurement (memory: see the pure-core bytes per task)"
    )


@contextlib.asynccontextmanager
async def _recorded(res: dict[str, Any], scenario: str) -> AsyncIterator[None]:
    """Record a scenario's failure in the results and go on with the next one."""
    try:
        yield
    except Exception as e:
        progress(f"{scenario}: FAILED: {type(e).__name__}: {e}")
        res.setdefault("errors", {})[scenario] = f"{type(e).__name__}: {e}"


async def run_suite(
    profile: Profile, only: set[str], workdir: Path, timing: dict[str, float], durable: bool
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "profile": profile.name,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_facts(),
        "sizes": vars(profile),
        "timing_overrides": timing,
        "durable": durable,
        "notes": [],
    }
    core_rate = 0.0
    if "core" in only:
        res["core"] = run_core(profile.core_agents, profile.core_jobs, profile.core_tasks_per_job)
        core_rate = res["core"]["placements_per_s"]
    cluster_needed = only & {"throughput", "latency", "failover", "soak"}
    shared_c1m = profile.c1m_agents == 3 * profile.agents_per_node
    if cluster_needed or ("c1m" in only and shared_c1m):
        progress(f"starting 3 nodes with {profile.agents_per_node} simulated agents each")
        cluster = BenchCluster(workdir / "cluster", profile.agents_per_node, timing, durable)
        try:
            cluster.start()
            cluster.wait_healthy(90)
            if "throughput" in only:
                async with _recorded(res, "throughput"):
                    res["throughput"] = await throughput(
                        cluster, profile.tp_jobs, profile.tp_tasks_per_job, core_rate
                    )
            if "latency" in only:
                async with _recorded(res, "latency"):
                    res["latency"] = [await open_loop(cluster, r, profile.rate_duration_s) for r in profile.rates]
                    res["sequential"] = await sequential(cluster, profile.sequential)
            if "failover" in only:
                async with _recorded(res, "failover"):
                    res["failover"] = await failover(cluster, profile.failover_trials)
            if "soak" in only:
                async with _recorded(res, "soak"):
                    res["soak"] = await soak(
                        cluster, profile.soak_s, profile.soak_jobs_per_s, profile.soak_tasks_per_job
                    )
            if "c1m" in only and shared_c1m:
                async with _recorded(res, "c1m"):
                    res["c1m"] = await c1m(
                        cluster, profile.c1m_jobs, profile.c1m_tasks_per_job, profile.c1m_timeout_s
                    )
        finally:
            cluster.stop()
    if "c1m" in only and not shared_c1m:
        per_node = max(1, profile.c1m_agents // 3)
        progress(f"starting a fresh 3-node cluster with {per_node} simulated agents each for the C1M run")
        cluster = BenchCluster(workdir / "c1m", per_node, timing, durable)
        try:
            cluster.start()
            cluster.wait_healthy(300)
            async with _recorded(res, "c1m"):
                res["c1m"] = await c1m(cluster, profile.c1m_jobs, profile.c1m_tasks_per_job, profile.c1m_timeout_s)
        finally:
            cluster.stop()
    if res.get("c1m"):
        res["c1m"]["extrapolation"] = _extrapolate(res["c1m"])
    return res


def publish(out: Path) -> None:
    """Copy a run's markdown and plots to bench/results/latest.md (+ latest-*.png), the committed copy."""
    md = (out / "results.md").read_text()
    RESULTS.mkdir(parents=True, exist_ok=True)
    for png in out.glob("*.png"):
        shutil.copy(png, RESULTS / f"latest-{png.name}")
        md = md.replace(f"`{png.name}`", f"`latest-{png.name}`")
    (RESULTS / "latest.md").write_text(md)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the benchmark suite")
    run.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    run.add_argument("--out", type=Path, help="results directory (default bench/results/<timestamp>)")
    run.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    run.add_argument("--publish", action="store_true", help="also write bench/results/latest.md and its plots")
    run.add_argument(
        "--timing",
        action="append",
        default=[],
        metavar="KEY=SECONDS",
        help="override a [timing] setting of every node (repeatable), e.g. raft_min_timeout_s=0.2",
    )
    run.add_argument("--no-durable", action="store_true", help="run the nodes with node.durable = false")
    run.add_argument("--keep", action="store_true", help="keep the clusters' data directories")
    local = sub.add_parser("local", help="the dev cluster with real agents: failover and sequential latency")
    local.add_argument("--trials", type=int, default=10)
    local.add_argument("--submissions", type=int, default=200)
    local.add_argument("--out", type=Path, default=RESULTS / "local.json")
    local.add_argument("--no-durable", action="store_true", help="run the nodes with node.durable = false")
    args = ap.parse_args(argv)
    if args.cmd == "local":
        from bench.local import run as run_local

        args.out.parent.mkdir(parents=True, exist_ok=True)
        run_local(args.trials, args.submissions, args.out, durable=not args.no_durable)
        return 0
    profile = PROFILES[args.profile]
    only = set(SCENARIOS) if not args.only else {s.strip() for s in args.only.split(",")}
    unknown = only - set(SCENARIOS)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    timing: dict[str, float] = {}
    for item in args.timing:
        key, sep, value = item.partition("=")
        try:
            timing[key.strip()] = float(value)
        except ValueError:
            ap.error(f"--timing {item!r}: expected KEY=SECONDS")
        if not sep:
            ap.error(f"--timing {item!r}: expected KEY=SECONDS")
    out = args.out or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="conclave-bench-"))
    progress(f"profile {profile.name}: results in {out}, clusters in {workdir}")
    t0 = time.monotonic()
    try:
        res = asyncio.run(run_suite(profile, only, workdir, timing, not args.no_durable))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    res["wall_s"] = time.monotonic() - t0
    res["machine"]["loadavg_at_end"] = os.getloadavg()[0]
    report.write(res, out)
    if args.publish:
        publish(out)
    print(report.markdown(res))
    if res.get("errors"):
        progress(f"scenarios that failed: {', '.join(sorted(res['errors']))}")
        return 1
    progress(f"done in {res['wall_s']:.0f}s: {out / 'results.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
