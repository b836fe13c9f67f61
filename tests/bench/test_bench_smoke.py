"""The benchmark harness runs end to end at the smoke size and writes well-formed results.

Checks shape only (every scenario reported, numbers are numbers, files exist); never speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.cluster


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _summary_ok(s: dict[str, Any]) -> None:
    assert s["n"] > 0
    for k in ("min", "p50", "p99", "max"):
        assert _number(s[k]), (k, s)
    assert s["min"] <= s["p50"] <= s["p99"] <= s["max"]


def test_smoke_profile_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--profile", "smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((out / "results.json").read_text())
    assert res["profile"] == "smoke"
    assert res["machine"]["cpus"] >= 1

    core = res["core"]
    assert core["tasks"] == res["sizes"]["core_jobs"] * res["sizes"]["core_tasks_per_job"]
    for k in ("placements_per_s", "launch_only_per_s", "status_only_per_s", "state_bytes_per_task", "snapshot_s"):
        assert _number(core[k]) and core[k] > 0, k

    tp = res["throughput"]
    assert tp["tasks_placed"] == tp["tasks"]
    assert tp["complete_jobs"] == tp["jobs"]
    assert _number(tp["placements_per_s"]) and tp["placements_per_s"] > 0
    assert _number(tp["ratio_to_core"])
    assert isinstance(tp["elections"], int) and tp["elections"] >= 0

    assert [lat["rate"] for lat in res["latency"]] == res["sizes"]["rates"]
    for lat in res["latency"]:
        assert lat["started"] == lat["accepted"] == lat["requested"]
        _summary_ok(lat["submit_to_running_ms"])
    _summary_ok(res["sequential"]["submit_to_running_ms"])

    fo = res["failover"]
    assert len(fo["trials"]) == res["sizes"]["failover_trials"]
    for row in fo["trials"]:
        assert row["new_term"] > row["old_term"]
        assert _number(row["first_launch_s"]) and _number(row["leader_s"])
    _summary_ok(fo["first_launch_s"])

    c = res["c1m"]
    assert c["tasks"] == res["sizes"]["c1m_jobs"] * res["sizes"]["c1m_tasks_per_job"]
    assert _number(c["all_placed_s"]) and _number(c["restart_to_healthy_s"])
    assert c["state_survived_restart"] is True
    assert set(c["peak_rss_mb"]) == {"n1", "n2", "n3"} and all(v > 0 for v in c["peak_rss_mb"].values())
    assert all(d["allocated_bytes"] > 0 for d in c["disk"].values())

    sk = res["soak"]
    assert sk["jobs_sent"] > 0 and len(sk["samples"]) >= 2
    assert all(_number(v) for s in sk["samples"] for v in s["rss_mb"].values())

    md = (out / "results.md").read_text()
    assert "| # | measurement | result | target |" in md
    assert set(res["plots"]) == {"latency_cdf.png", "failover.png", "soak_rss.png", "c1m_rss.png"}
    for name in res["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_cluster_measurements_write_results(tmp_path: Path) -> None:
    out = tmp_path / "local.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "local", "--trials", "1", "--submissions", "3", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["sequential"]["count"] == 3
    _summary_ok(res["sequential"]["submit_to_running_ms"])
    _summary_ok(res["failover"]["first_launch_s"])
    assert "SIGKILL leader → first launch" in proc.stdout
