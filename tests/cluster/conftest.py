from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.localcluster import LocalCluster, running_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three real nodes on loopback, ready (leader agreed, every agent active)."""
    with running_cluster(tmp_path / "c") as c:
        yield c
