"""Log compaction with real processes: msgpack snapshots, whole-cluster restart from snapshot + journal, and a
follower that fell behind catching up through a snapshot sent by the leader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from node.localcluster import LocalCluster, running_cluster, wait_until

pytestmark = pytest.mark.cluster


SNAPSHOT_OFTEN = "snapshot_entries = 40\nsnapshot_interval_s = 1.0"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path / "c", node_config=SNAPSHOT_OFTEN) as c:
        yield c


def snapshot_file(c: LocalCluster, node: str) -> Path:
    return c.dir / node / "data" / "raft" / "raft.snapshot"


def submit_many(c: LocalCluster, prefix: str, n: int) -> list[str]:
    ids = []
    for i in range(n):
        job = {"name": f"{prefix}-{i}", "tasks": [{"name": "t", "command": ["true"]}]}
        ids.append(c.client.submit(job, f"{prefix}-{i}"))
    return ids


def test_snapshots_are_msgpack_and_survive_a_whole_cluster_restart(cluster: LocalCluster) -> None:
    ids = submit_many(cluster, "snap", 30)
    for job_id in ids:
        cluster.wait_job(job_id)
    for node in cluster.procs:
        wait_until(f"a snapshot on {node}", lambda n=node: snapshot_file(cluster, n).exists(), 30)  # type: ignore[misc]
        blob = msgpack.unpackb(snapshot_file(cluster, node).read_bytes(), raw=False)
        assert blob["format"] == 1 and isinstance(blob["state"], bytes)  # our format, not pickle
        assert cluster.status(node)["snapshots_written"] >= 1  # by a forked child, while the node kept going
    cluster.wait_converged()
    for node in list(cluster.procs):
        cluster.kill(node)
    cluster.start()
    cluster.wait_ready()
    for job_id in ids:
        assert cluster.job(job_id)["state"] == "complete"
    cluster.wait_converged()


def test_a_lagging_follower_catches_up_from_a_snapshot(cluster: LocalCluster) -> None:
    leader = cluster.wait_ready()
    lagger = next(n for n in cluster.procs if n != leader)
    cluster.terminate(lagger)
    ids = submit_many(cluster, "behind", 40)
    for job_id in ids:
        cluster.wait_job(job_id)
    wait_until("the leader compacted", lambda: snapshot_file(cluster, leader).exists(), 30)
    cluster.start(only=[lagger])
    cluster.wait_ready()
    cluster.wait_converged(timeout=30)
    for job_id in ids[-3:]:
        assert cluster.job(job_id, lagger)["state"] == "complete"
