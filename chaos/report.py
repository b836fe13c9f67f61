"""Summaries (markdown, JSON) and the timeline plot of a run or a profile."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaos.checkers import Attempt
from chaos.history import pairs


def ops_by_f(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "fail": 0, "info": 0})
    for inv, comp in pairs(entries):
        out[str(inv.get("f"))][comp["type"] if comp else "info"] += 1
    return {k: dict(v) for k, v in out.items()}


def _agree(group: Sequence[dict[str, Any]], nodes: Sequence[str]) -> bool:
    by = {s["node"]: s for s in group}
    if set(by) < set(nodes) or not all(by[n]["up"] for n in nodes):
        return False
    leaders = {by[n]["leader"] for n in nodes}
    if len(leaders) != 1:
        return False
    leader = leaders.pop()
    return leader in by and by[leader]["role"] == "leader"


def fault_recoveries(
    entries: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]], nodes: Sequence[str]
) -> list[dict[str, Any]]:
    """For every fault that ended: seconds until a monitor round saw all nodes up and agreeing on a leader."""
    rounds: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        rounds[int(s["round"])].append(s)
    ordered = sorted(rounds.values(), key=lambda g: min(x["t"] for x in g))
    out: list[dict[str, Any]] = []
    for e in entries:
        if e.get("f") not in ("nemesis-stop", "heal-all"):
            continue
        ts = float(e["t"])
        rec: float | None = None
        for g in ordered:
            t = min(x["t"] for x in g)
            if t >= ts and _agree(g, nodes):
                rec = round(t - ts, 2)
                break
        out.append({"kind": e.get("kind", "heal-all"), "t": ts, "recovery_s": rec})
    return out


def _fmt_counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"


def run_markdown(s: dict[str, Any]) -> str:
    v = s["violations"]
    lines = [
        f"# Chaos run {s['run_id']}",
        "",
        "| seed | scenario | nemeses | nodes | fencing | faults injected | ops ok/fail/unknown | violations "
        "| recovery (s) | terminal (s) | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {s['seed']} | {s['scenario']} | {', '.join(s['nemeses']) or '-'} | {s['nodes']} ({s['backend']}) "
        f"| {'on' if s['fencing'] else 'OFF'} | {_fmt_counts(s['faults'])} "
        f"| {s['ops']['ok']}/{s['ops']['fail']}/{s['ops']['info']} | {len(v)} | {s['recovery_s']} "
        f"| {s['terminal_s']} | {s['wall_s']} |",
        "",
        f"Replay: `{s['replay']}`",
        "",
        f"Submissions: {_fmt_counts(s['submissions'])}; unknown outcomes found present/absent: "
        f"{s['unknown_submissions'].get('unknown_present', 0)}/{s['unknown_submissions'].get('unknown_absent', 0)}; "
        f"task attempts recorded: {s['attempts_recorded']}.",
        "",
    ]
    if v:
        lines += ["## Violations", ""] + [f"- **{x['kind']}**: {x['message']}" for x in v] + [""]
    if s["warnings"]:
        lines += ["## Warnings", ""] + [f"- {x['kind']}: {x['message']}" for x in s["warnings"][:50]] + [""]
    recs = [r for r in s.get("fault_recoveries", []) if r["kind"] != "heal-all"]
    if recs:
        lines += ["## Recovery after each fault", "", "| fault | recovery (s) |", "|---|---|"]
        lines += [f"| {r['kind']} | {r['recovery_s'] if r['recovery_s'] is not None else 'not seen'} |" for r in recs]
        lines.append("")
    if s.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in s["notes"]] + [""]
    return "\n".join(lines)


def profile_markdown(name: str, summaries: Sequence[dict[str, Any]], wall_s: float) -> str:
    lines = [
        f"# Chaos profile `{name}`: {len(summaries)} run(s) in {wall_s:.0f}s",
        "",
        "| seed | nemeses | nodes | faults injected | ops ok/fail/unknown | violations | recovery (s) | run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        kinds = sorted({x["kind"] for x in s["violations"]})
        vtxt = f"{len(s['violations'])} ({', '.join(kinds)})" if kinds else "0"
        nem = "pause-lease" if s["scenario"] == "pause-lease" else (", ".join(s["nemeses"]) or "-")
        lines.append(
            f"| {s['seed']} | {nem} | {s['nodes']} | {_fmt_counts(s['faults'])} "
            f"| {s['ops']['ok']}/{s['ops']['fail']}/{s['ops']['info']} | {vtxt} | {s['recovery_s']} "
            f"| {s['run_id']} |"
        )
    total: dict[str, int] = defaultdict(int)
    for s in summaries:
        for k, n in s["faults"].items():
            total[k] += n
    bad = [s for s in summaries if s["violations"]]
    lines += [
        "",
        f"Faults injected in total: {_fmt_counts(dict(total))}.",
        f"Runs with violations: {len(bad)} of {len(summaries)}.",
        "",
    ]
    for s in bad:
        lines.append(f"- seed {s['seed']}: `{s['replay']}`")
    return "\n".join(lines) + "\n"


COLORS = {
    "partition": "#d62728", "isolate": "#ff7f0e", "isolate-leader": "#e377c2", "bridge": "#8c564b",
    "ring": "#9467bd", "one-way": "#bcbd22", "kill": "#000000", "pause": "#1f77b4", "clock": "#17becf",
    "disk": "#7f7f7f",
}


def timeline_png(
    path: Path,
    entries: Sequence[dict[str, Any]],
    samples: Sequence[dict[str, Any]],
    nodes: Sequence[str],
    t0: float,
    attempts: Sequence[Attempt],
    summary: dict[str, Any],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(13, 2.2 + 0.45 * (len(nodes) + 4)))
    rows: list[str] = []

    def row(label: str) -> int:
        rows.append(label)
        return len(rows) - 1

    # faults
    y = row("faults")
    open_: dict[str, float] = {}
    for e in entries:
        if e.get("f") == "nemesis-start":
            open_[str(e["kind"])] = float(e["t"])
        elif e.get("f") == "nemesis-stop" and str(e.get("kind")) in open_:
            k = str(e["kind"])
            ts = open_.pop(k)
            ax.broken_barh([(ts - t0, float(e["t"]) - ts)], (y - 0.4, 0.8), color=COLORS.get(k, "gray"), alpha=0.8)
            ax.text(ts - t0, y + 0.45, k, fontsize=7)
        elif e.get("f") == "heal-all":
            ax.axvline(float(e["t"]) - t0, color="green", linestyle="--", linewidth=1)
    # node roles
    by_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for smp in samples:
        by_node[str(smp["node"])].append(smp)
    for n in nodes:
        y = row(n)
        pts = sorted(by_node.get(n, []), key=lambda x: float(x["t"]))
        for a, b in itertools.pairwise(pts):
            color = None
            if not a["up"]:
                color = "#bbbbbb"
            elif a["role"] == "leader":
                color = "#2ca02c"
            elif a["role"] == "candidate":
                color = "#ffbb78"
            if color:
                ax.broken_barh([(a["t"] - t0, b["t"] - a["t"])], (y - 0.3, 0.6), color=color)
    # attempts per agent (count running)
    y = row("attempts")
    for att in attempts:
        ax.plot([att.start - t0, att.last - t0], [y, y], color="#1f77b4", alpha=0.15, linewidth=4)
    # ops
    colors = {"ok": "#2ca02c", "fail": "#d62728", "info": "#ff7f0e"}
    for kind in ("ok", "fail", "info"):
        xs = []
        for inv, comp in pairs(entries):
            k = comp["type"] if comp else "info"
            if k == kind:
                xs.append(float(inv["t"]) - t0)
        yo = row(f"ops {kind}")
        ax.scatter(xs, [yo] * len(xs), s=10, color=colors[kind], marker="|")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows)
    ax.set_xlabel("seconds since the fault phase started (green dashed: final heal)")
    nv = len(summary.get("violations", []))
    ax.set_title(
        f"seed {summary.get('seed')} - {', '.join(summary.get('nemeses', [])) or summary.get('scenario')} - "
        f"{nv} violation(s); nodes: green leader, orange candidate, grey no answer"
    )
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
