"""The planted bug: with fencing off, a paused agent's attempt and its replacement run at the same time.

Scenario (``--scenario pause-lease``): one long task starts; its node is SIGSTOPped for 12 s (beyond the
agent lease, 4 s, and the leader's agent timeout, 6 s); the leader starts a replacement attempt elsewhere;
the node is resumed. With fencing on, the task's supervisor kills the old attempt when the lease runs out,
before the replacement can start. With ``CONCLAVE_UNSAFE_NO_FENCING=1`` nobody does, and the overlap
checker must see both attempts execute together.
"""

from __future__ import annotations

import pytest

from chaos.runner import Run, RunConfig, RunResult

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("need_netns")]


def run(unsafe: bool, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    cfg = RunConfig(seed=11, nemeses=["pause"], scenario="pause-lease", unsafe_no_fencing=unsafe,
                    out_dir=tmp_path_factory.mktemp("runs"), keep=True)
    return Run(cfg, progress=print).execute()


def test_overlap_checker_catches_the_planted_bug(tmp_path_factory: pytest.TempPathFactory) -> None:
    r = run(True, tmp_path_factory)
    overlaps = [v for v in r.violations if v.kind == "overlap"]
    assert overlaps, f"expected an overlap with fencing off; got {[v.message for v in r.violations]}"
    assert overlaps[0].detail["overlap_s"] > 1.0
    assert r.summary["faults"] == {"pause": 1}


def test_fencing_prevents_the_overlap(tmp_path_factory: pytest.TempPathFactory) -> None:
    r = run(False, tmp_path_factory)
    assert r.summary["notes"] == [], r.summary["notes"]  # a replacement did start while the node was paused
    assert r.violations == [], [v.message for v in r.violations]
