"""The CLI as a user runs it: clear one-line errors, no tracebacks; job commands against a live cluster."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.localcluster import LocalCluster, running_cluster

ROOT = Path(__file__).resolve().parents[2]


def conclave(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("not toml [", "invalid TOML"),
        ("[node]\nid='n1'\n", "node.data_dir: required"),
        (
            "[node]\nid='n1'\ndata_dir='/tmp/x'\nraft_address='0.0.0.0:1'\napi_address='127.0.0.1:2'\n",
            "refusing to bind a wildcard address",
        ),
        (
            "[node]\nid='n1'\ndata_dir='/tmp/x'\nraft_address='127.0.0.1:99999'\napi_address='127.0.0.1:2'\n",
            "out of range",
        ),
        (
            "[node]\nid='n1'\ndata_dir='/tmp/x'\nraft_address='127.0.0.1:1'\napi_address='127.0.0.1:2'\n"
            "[cluster]\ntoken='short'\n",
            "cluster.token: must be at least 8 characters",
        ),
        (
            "[node]\nid='n1'\ndata_dir='/tmp/x'\nraft_address='127.0.0.1:1'\napi_address='127.0.0.1:2'\n"
            "[cluster]\ntoken='long-enough'\n[[cluster.peers]]\nid='n2'\nraft_address='127.0.0.1:3'\napi_url='http://x'\n",
            "this node (n1) must be listed",
        ),
        (
            "[node]\nid='n1'\ndata_dir='/tmp/x'\nraft_address='127.0.0.1:1'\napi_address='127.0.0.1:2'\n"
            "[cluster]\ntoken='long-enough'\n[[cluster.peers]]\nid='n1'\nraft_address='127.0.0.1:1'\napi_url='http://x'\n"
            "[timing]\nagent_lease_s=9\n",
            "agent_lease_s must be below agent_timeout_s",
        ),
        (
            "[node]\nid='n1'\ndata_dir='/tmp/x'\nraft_address='127.0.0.1:1'\napi_address='127.0.0.1:2'\n"
            "[cluster]\ntoken='long-enough'\n[[cluster.peers]]\nid='n1'\nraft_address='127.0.0.1:1'\napi_url='http://x'\n"
            "[timing]\nraft_min_timeout_s=0.1\n",
            "raft_min_timeout_s must exceed 3 x raft_append_period_s",
        ),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, toml: str, message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    r = conclave("node", "--config", str(cfg))
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_missing_config_and_bad_job_file(tmp_path: Path) -> None:
    r = conclave("node", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read config" in r.stderr
    bad = tmp_path / "job.json"
    bad.write_text(json.dumps({"name": "x", "tasks": [{"name": "a", "command": ["x"], "depends_on": ["b"]}]}))
    r = conclave("job", "run", str(bad), "--url", "http://127.0.0.1:9")
    assert r.returncode == 2 and "unknown dependency" in r.stderr and "Traceback" not in r.stderr


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    r = conclave("job", "status", "x", "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and r.stderr.startswith("error: unreachable") and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cli") / "c") as c:
        yield c


@pytest.mark.cluster
def test_cli_against_a_live_cluster(live: LocalCluster) -> None:
    cf = str(live.dir / "cluster.json")
    r = conclave("job", "run", str(ROOT / "examples" / "airavata_experiment.json"), "--cluster", cf, "--wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    r = conclave("job", "status", job_id, "--cluster", cf)
    assert r.returncode == 0 and "complete" in r.stdout and "output_staging" in r.stdout
    r = conclave("job", "events", job_id, "--cluster", cf)
    assert r.returncode == 0 and "job_complete" in r.stdout
    r = conclave("status", "--cluster", cf)
    rows = [ln.split() for ln in r.stdout.splitlines()[1:]]
    assert r.returncode == 0 and len(rows) == 3
    assert sorted(row[1] for row in rows) == ["follower", "follower", "leader"] and len({row[2] for row in rows}) == 1
    r = conclave("job", "cancel", job_id, "--cluster", cf)
    assert r.returncode == 0 and '"changed": false' in r.stdout
    r = conclave("node", "drain", "n2", "--deadline", "30", "--cluster", cf)
    assert r.returncode == 0 and '"draining"' in r.stdout
    r = conclave("job", "status", "no-such-job", "--cluster", cf)
    assert r.returncode == 1 and "not_found" in r.stderr
    r = conclave(
        "job", "run", str(ROOT / "examples" / "airavata_experiment.json"), "--cluster", cf, "--token", "wrongtoken"
    )
    assert r.returncode == 1 and "unauthorized" in r.stderr


@pytest.mark.cluster
def test_dev_cluster_runs_the_sample_and_resumes_with_its_jobs(tmp_path: Path) -> None:
    d = tmp_path / "dev"
    sample = str(ROOT / "examples" / "airavata_experiment.json")
    first = conclave("dev", "--dir", str(d), "--submit", sample, "--exit", timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "complete" in first.stdout and "stopped" in first.stdout
    cluster = json.loads((d / "cluster.json").read_text())
    assert [n["id"] for n in cluster["nodes"]] == ["n1", "n2", "n3"] and cluster["token"]
    second = conclave("dev", "--dir", str(d), "--submit", sample, "--exit", timeout=180)
    assert second.returncode == 0, second.stdout + second.stderr
    # the restarted cluster still has the first run's job: both experiments are listed, both complete
    ids = re.findall(r"^submitted \S+ as job (\w+);", first.stdout + second.stdout, re.MULTILINE)
    assert len(ids) == 2 and ids[0] != ids[1]
    third = subprocess.Popen(
        [sys.executable, "-m", "node", "dev", "--dir", str(d)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert third.stdout is not None
        for line in third.stdout:
            if line.startswith("cluster running"):
                break
        listing = conclave("job", "list", "--cluster", str(d / "cluster.json"))
        assert listing.returncode == 0
        for job_id in ids:
            assert f"{job_id}  complete" in listing.stdout
    finally:
        third.send_signal(signal.SIGTERM)
        assert third.wait(30) == 0
