"""``python -m chaos``: run, plan, cleanup."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from chaos import schedule, sysutil
from chaos.net import default_backend
from chaos.runner import DEFAULT_RUNS, Run, RunConfig, RunResult

# The short profile: every nemesis at least once, about a minute per run.
SHORT: list[dict[str, Any]] = [
    {"seed": 1, "nemeses": ["partition", "isolate"], "nodes": 3},
    {"seed": 2, "nemeses": ["isolate-leader", "one-way"], "nodes": 3},
    {"seed": 3, "nemeses": ["kill", "pause"], "nodes": 3},
    {"seed": 4, "nemeses": ["clock", "disk"], "nodes": 3},
    {"seed": 5, "nemeses": ["bridge", "ring"], "nodes": 5},
    {"seed": 6, "nemeses": ["partition", "kill", "pause", "isolate-leader"], "nodes": 3},
]
SHORT_DURATION_S = 28.0


def long_profile(count: int, first_seed: int = 100) -> list[dict[str, Any]]:
    """Hundreds of seeds; each seed picks its own nemesis mix (and every fifth run uses 5 nodes)."""
    out: list[dict[str, Any]] = []
    for seed in range(first_seed, first_seed + count):
        rng = random.Random(seed)
        nodes = 5 if seed % 5 == 0 else 3
        menu = [k for k in schedule.ALL if k != "ring" or nodes >= 5]
        k = rng.choice([1, 2, 2, 3])
        out.append({"seed": seed, "nemeses": sorted(rng.sample(menu, k), key=schedule.ALL.index), "nodes": nodes})
    return out


def _on_signal(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _preflight(backend: str, nemeses: list[str]) -> str | None:
    if backend == "netns":
        if not sysutil.is_root():
            return "the netns backend needs root (use --backend proxy on a laptop)"
        try:
            sysutil.ensure_tools("clock" in nemeses)
        except sysutil.CommandError as e:
            return str(e)
    elif any(n in schedule.NEEDS_NETNS for n in nemeses):
        return f"nemeses {', '.join(schedule.NEEDS_NETNS)} need the netns backend (root)"
    return None


def _print_result(r: RunResult) -> None:
    s = r.summary
    verdict = "ok" if r.ok else f"FAIL: {len(r.violations)} violation(s)"
    print(
        f"  -> {verdict}; faults {s['faults']}; ops ok/fail/unknown "
        f"{s['ops']['ok']}/{s['ops']['fail']}/{s['ops']['info']}; recovery {s['recovery_s']}s; "
        f"{s['wall_s']}s; {r.run_dir}",
        flush=True,
    )
    for v in r.violations[:10]:
        print(f"     ! {v.kind}: {v.message}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    backend = args.backend or default_backend()
    if args.profile:
        plan = SHORT if args.profile == "short" else long_profile(args.count, args.first_seed)
        duration = args.duration or SHORT_DURATION_S
        name = args.profile
    else:
        seeds = args.seed or [int(time.time()) % 100000]
        nemeses = ["pause"] if args.scenario == "pause-lease" else (args.nemesis or ["partitions"])
        plan = []
        for seed in seeds:
            try:
                kinds = schedule.expand(nemeses, args.nodes)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            plan.append({"seed": seed, "nemeses": kinds, "nodes": args.nodes})
        duration = args.duration or 30.0
        name = "custom"
    all_kinds = sorted({k for p in plan for k in p["nemeses"]})
    problem = _preflight(backend, all_kinds)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 3
    out = Path(args.out) if args.out else DEFAULT_RUNS
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_signal)
    started = time.time()
    results: list[RunResult] = []
    print(f"chaos profile {name}: {len(plan)} run(s), backend {backend}, {duration:g}s of faults each", flush=True)
    try:
        for i, p in enumerate(plan):
            cfg = RunConfig(
                seed=int(p["seed"]),
                nemeses=list(p["nemeses"]),
                nodes=int(p["nodes"]),
                backend=backend,
                duration_s=duration,
                clients=args.clients,
                unsafe_no_fencing=args.unsafe_no_fencing,
                scenario=args.scenario,
                pause_scope=args.pause_scope,
                out_dir=out,
                keep=args.keep,
            )
            label = "pause-lease" if cfg.scenario == "pause-lease" else ",".join(cfg.nemeses) or "none"
            print(f"[{i + 1}/{len(plan)}] seed {cfg.seed}: {label} on {cfg.nodes} nodes "
                  f"(fencing {'OFF' if cfg.unsafe_no_fencing else 'on'})", flush=True)
            r = Run(cfg, progress=lambda m: print(m, flush=True)).execute()
            _print_result(r)
            results.append(r)
            if args.stop_on_failure and not r.ok:
                break
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    wall = time.time() - started
    from chaos.report import profile_markdown

    summaries = [r.summary for r in results]
    pdir = out / f"profile-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    pdir.mkdir(parents=True, exist_ok=True)
    md = profile_markdown(name, summaries, wall)
    (pdir / "summary.md").write_text(md)
    (pdir / "summary.json").write_text(json.dumps(summaries, indent=1, default=str))
    print()
    print(md)
    print(f"written to {pdir}")
    return 1 if any(not r.ok for r in results) else 0


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        kinds = schedule.expand(args.nemesis or ["partitions"], args.nodes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    nodes = [f"n{i + 1}" for i in range(args.nodes)]
    for seed in args.seed or [1]:
        faults = schedule.make_schedule(seed, kinds, nodes, args.duration)
        print(f"seed {seed}:")
        for f in faults:
            params = {k: v for k, v in f.params.items() if k != "cuts"}
            print(f"  {f.at:6.2f}s +{f.duration:5.2f}s  {f.kind:<15} {json.dumps(params)}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    done = sysutil.cleanup_leftovers(force=args.force)
    for d in done:
        print(d)
    if not done:
        print("nothing to clean")
    if args.runs:
        runs = DEFAULT_RUNS
        if runs.exists():
            shutil.rmtree(runs)
            print(f"removed {runs}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m chaos", description="Chaos tests for Conclave.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run a profile, or one or more seeds")
    run.add_argument("--profile", choices=["short", "long"])
    run.add_argument("--count", type=int, default=200, help="runs in the long profile (default 200)")
    run.add_argument("--first-seed", type=int, default=100, help="first seed of the long profile")
    run.add_argument("--seed", type=int, action="append", help="seed (repeatable)")
    run.add_argument("--nemesis", action="append",
                     help=f"comma list of {', '.join(schedule.ALL)} or groups {', '.join(schedule.GROUPS)}")
    run.add_argument("--nodes", type=int, default=3, choices=[3, 5])
    run.add_argument("--backend", choices=["netns", "proxy"], help="default: netns as root, else proxy")
    run.add_argument("--duration", type=float, help="seconds of faults per run")
    run.add_argument("--clients", type=int, default=2)
    run.add_argument("--scenario", choices=["random", "pause-lease"], default="random")
    run.add_argument("--pause-scope", choices=["node", "tree"], default="node",
                     help="pause-lease scenario: stop the node process only, or the node and all its tasks")
    run.add_argument("--unsafe-no-fencing", action="store_true",
                     help="start nodes with CONCLAVE_UNSAFE_NO_FENCING=1 (the planted bug)")
    run.add_argument("--keep", action="store_true", help="keep node logs and task records of passing runs")
    run.add_argument("--stop-on-failure", action="store_true")
    run.add_argument("--out", help=f"runs directory (default {DEFAULT_RUNS})")
    run.set_defaults(fn=cmd_run)
    plan = sub.add_parser("plan", help="print the fault schedule a seed produces, without running it")
    plan.add_argument("--seed", type=int, action="append")
    plan.add_argument("--nemesis", action="append")
    plan.add_argument("--nodes", type=int, default=3, choices=[3, 5])
    plan.add_argument("--duration", type=float, default=30.0)
    plan.set_defaults(fn=cmd_plan)
    cl = sub.add_parser("cleanup", help="remove namespaces, mounts, processes and dirs left by earlier runs")
    cl.add_argument("--force", action="store_true", help="also runs whose owner process is still alive")
    cl.add_argument("--runs", action="store_true", help="also delete chaos/runs/")
    cl.set_defaults(fn=cmd_cleanup)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return int(args.fn(args))
