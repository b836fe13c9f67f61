"""Results: JSON, a markdown table, and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TARGETS = {
    "placements_per_s": 50_000,
    "ratio": 0.5,
    "lat_p50_ms": 10,
    "lat_p99_ms": 50,
    "failover_p50_s": 0.5,
    "failover_p99_s": 1.0,
    "c1m_s": 60,
    "bytes_per_task": 1024,
}


def _f(v: Any, fmt: str = "{:,.0f}") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and v != v:
        return "—"
    return fmt.format(v)


def _ok(good: bool | None) -> str:
    if good is None:
        return ""
    return "met" if good else "**missed**"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# Conclave benchmark — profile `{res['profile']}`",
        "",
        f"Run {res['started']} on {m.get('cpus')} cores ({m.get('cpu_model', '?')}), {m.get('mem_gib')} GiB, "
        f"Python {m.get('python')}; 3 voters on 127.0.0.1, durable journals, encrypted peer traffic; "
        "agents are simulated (register, heartbeat and report through the log; run no processes). "
        f"Wall time {res.get('wall_s', 0):.0f} s; 1-min load average {m.get('loadavg_at_start', 0):.1f} at the "
        f"start, {m.get('loadavg_at_end', 0):.1f} at the end (above {m.get('cpus')}: other work shared the cores)."
        + ("" if res.get("durable", True) else " **Journals not flushed (durable = false).**")
        + (f" Timing overrides: {res['timing_overrides']}." if res.get("timing_overrides") else ""),
        "",
        "| # | measurement | result | target | |",
        "|---|---|---|---|---|",
    ]
    core = res.get("core")
    if core:
        lines.append(
            f"| 1 | pure core: placements applied/s ({core['tasks']:,} tasks, Launch + StatusUpdate) "
            f"| {_f(core['placements_per_s'])} | ≥ 50,000 | {_ok(core['placements_per_s'] >= 50_000)} |"
        )
        lines.append(
            f"| 1 | pure core: Launch only / StatusUpdate only, per s | {_f(core['launch_only_per_s'])} / "
            f"{_f(core['status_only_per_s'])} | | |"
        )
        lines.append(f"| 1 | pure core: SubmitJob apply, tasks/s | {_f(core['submit_tasks_per_s'])} | | |")
        lines.append(
            f"| 1 | leader decision (allocate + place), placements/s | {_f(core['leader_decide_per_s'])} | | |"
        )
        lines.append(
            f"| 1 | replicated state per finished task (snapshot bytes / tasks) | "
            f"{_f(core['state_bytes_per_task'])} B | ≤ 1 KB | {_ok(core['state_bytes_per_task'] <= 1024)} |"
        )
        lines.append(
            f"| 1 | log bytes per task (submit + launch + status entries) | {_f(core['log_bytes_per_task'])} B | | |"
        )
        lines.append(
            f"| 1 | snapshot serialize / restore / digest of {core['tasks']:,}-task state | "
            f"{core['snapshot_s']:.2f} s / {core['restore_s']:.2f} s / {core['digest_s']:.2f} s | | |"
        )
    tp = res.get("throughput")
    if tp:
        lines.append(
            f"| 2 | replicated: placements committed/s ({tp['tasks']:,} tasks, {tp['agents']} agents"
            + ("; submission overran the hold, so placement overlapped it" if tp.get("submission_overran_hold") else "")
            + ") "
            f"| {_f(tp['placements_per_s'])} | ≥ 50,000 | {_ok(tp['placements_per_s'] >= 50_000)} |"
        )
        r = tp.get("ratio_to_core")
        lines.append(
            f"| 2 | replicated ÷ pure core (same run) | {_f(r, '{:.2f}')} | ≥ 0.5 | "
            f"{_ok(r >= 0.5 if r is not None else None)} |"
        )
        lines.append(f"| 2 | tasks finished/s (through RUNNING + FINISHED reports) | {_f(tp['finished_per_s'])} | | |")
        lines.append(
            f"| 2 | elections during the throughput run | {tp['elections']} | 0 | {_ok(tp['elections'] == 0)} |"
        )
    for lat in res.get("latency", []):
        s = lat["submit_to_running_ms"]
        if not s.get("n"):
            continue
        good = s["p50"] <= 10 and s["p99"] <= 50 if lat["rate"] == 1000 else None
        lines.append(
            f"| 3 | submit→RUNNING at {lat['rate']}/s open loop (n={s['n']}, sent at "
            f"{_f(lat['achieved_send_rate'])}/s): p50 / p99 | {s['p50']:.1f} / {s['p99']:.1f} ms | "
            f"{'≤ 10 / ≤ 50 ms' if lat['rate'] == 1000 else ''} | {_ok(good)} |"
        )
    seq = res.get("sequential")
    if seq and seq["submit_to_running_ms"].get("n"):
        s = seq["submit_to_running_ms"]
        lines.append(f"| 3 | submit→RUNNING, {s['n']} sequential: p50 / p99 | {s['p50']:.1f} / {s['p99']:.1f} ms | | |")
    fo = res.get("failover")
    if fo and fo["first_launch_s"].get("n"):
        s, ls = fo["first_launch_s"], fo["leader_s"]
        good = s["p50"] <= 0.5 and s["p99"] <= 1.0
        lines.append(
            f"| 4 | SIGKILL leader → first launch by new leader ({s['n']} trials): p50 / p99 | "
            f"{s['p50']:.3f} / {s['p99']:.3f} s | ≤ 0.5 / ≤ 1 s | {_ok(good)} |"
        )
        lines.append(f"| 4 | … min / median / max | {s['min']:.3f} / {s['p50']:.3f} / {s['max']:.3f} s | | |")
        lines.append(f"| 4 | SIGKILL → new agreed leader: p50 / p99 | {ls['p50']:.3f} / {ls['p99']:.3f} s | | |")
        lines.append(f"| 4 | restart killed node → healthy: p50 | {fo['recovered_s']['p50']:.2f} s | | |")
    c = res.get("c1m")
    if c:
        label = "" if c["tasks"] >= 1_000_000 else f" (scaled: {c['jobs']:,} x {c['tasks'] // c['jobs']:,})"
        lines.append(
            f"| 5 | C1M-style{label}: {c['tasks']:,} tasks on {c['agents']:,} agents, all placed after | "
            f"{_f(c['all_placed_s'], '{:.1f}')} s | ≤ 60 s | "
            f"{_ok(c['all_placed_s'] <= 60 if c['tasks'] >= 1_000_000 and c['all_placed_s'] else None)} |"
        )
        lines.append(
            f"| 5 | … all finished after / submission took | {c['all_finished_s']:.1f} s / {c['submit_s']:.1f} s | | |"
        )
        peaks = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(c["peak_rss_mb"].items()))
        lines.append(f"| 5 | … peak RSS per node (MiB) | {peaks} | | |")
        disk = ", ".join(f"{k} {v['allocated_bytes'] / 2**20:,.0f}" for k, v in sorted(c["disk"].items()))
        lines.append(f"| 5 | … journal + snapshot on disk per node (MiB) | {disk} | | |")
        lines.append(f"| 5 | … full-cluster restart → healthy | {c['restart_to_healthy_s']:.1f} s | | |")
        if c.get("extrapolation"):
            lines.append(f"| 5 | … extrapolated to 1,000 x 1,000 | {c['extrapolation']} | | |")
    sk = res.get("soak")
    if sk:
        sl = ", ".join(f"{k} {v:+.1f}" for k, v in sorted(sk["rss_slope_mb_per_min_second_half"].items()))
        first, last = sk["samples"][0]["rss_mb"], sk["samples"][-1]["rss_mb"]
        rss = ", ".join(f"{k} {first.get(k, 0):,.0f}→{last.get(k, 0):,.0f}" for k in sorted(last))
        lines.append(
            f"| 6 | soak {sk['seconds']:.0f} s at {sk['jobs_per_s']:.0f} jobs/s x {sk['tasks_per_job']} tasks: "
            f"RSS MiB start→end | {rss} | flat | |"
        )
        lines.append(f"| 6 | … RSS slope over the second half (MiB/min) | {sl} | ≈ 0 | |")
    for scenario, err in sorted(res.get("errors", {}).items()):
        lines.append(f"| | {scenario}: did not complete | {err} | | |")
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in res.get("plots", [])), ""]
    for n in res.get("notes", []):
        lines.append(f"- {n}")
    return "\n".join(lines) + "\n"


def plots(res: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []
    series = [(f"{lat['rate']}/s open loop", lat["samples_ms"]) for lat in res.get("latency", [])]
    if res.get("sequential"):
        series.append(("sequential", res["sequential"]["samples_ms"]))
    series = [(k, v) for k, v in series if v]
    if series:
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, vals in series:
            s = sorted(vals)
            ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], label=f"{label} (n={len(s)})")
        ax.set_xscale("log")
        ax.set_xlabel("submit → RUNNING (ms, log scale)")
        ax.set_ylabel("fraction of jobs")
        ax.set_title("Latency CDF")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=110)
        plt.close(fig)
        made.append("latency_cdf.png")
    fo = res.get("failover")
    if fo and fo["trials"]:
        fig, ax = plt.subplots(figsize=(7, 4))
        xs = [r["trial"] + 1 for r in fo["trials"]]
        ax.plot(xs, [r["first_launch_s"] for r in fo["trials"]], "o-", label="first launch by new leader")
        ax.plot(xs, [r["leader_s"] for r in fo["trials"]], "s--", label="new agreed leader observed")
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="p50 target 0.5 s")
        ax.axhline(1.0, color="red", lw=0.8, ls=":", label="p99 target 1 s")
        ax.set_xlabel("trial")
        ax.set_ylabel("seconds after SIGKILL")
        ax.set_title("Leader failover")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "failover.png", dpi=110)
        plt.close(fig)
        made.append("failover.png")
    for key, fname, title in (("soak", "soak_rss.png", "Soak: RSS per node"), ("c1m", "c1m_rss.png", "C1M: RSS")):
        block = res.get(key)
        if not block:
            continue
        samples = block.get("samples") if key == "soak" else block.get("rss_samples")
        if not samples:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        nodes = sorted({n for s in samples for n in (s["rss_mb"] if key == "soak" else s) if n != "t"})
        for n in nodes:
            pts = [(s["t"], (s["rss_mb"] if key == "soak" else s).get(n)) for s in samples]
            pts = [(t, v) for t, v in pts if v]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=n)
        ax.set_xlabel("seconds")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        made.append(fname)
    return made


def write(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res["plots"] = plots(res, out)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "results.md").write_text(markdown(res))
