"""Partition shapes, seeded schedules and job specs (pure)."""

from __future__ import annotations

import itertools
import random

import pytest

from chaos import grudge, schedule
from chaos.jobs import TaskCommand, make_job

N3 = ["n1", "n2", "n3"]
N5 = ["n1", "n2", "n3", "n4", "n5"]


def test_between_is_symmetric_and_complete() -> None:
    cuts = grudge.between([["n1"], ["n2", "n3"]])
    assert cuts == {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}


def test_halves_leave_a_majority() -> None:
    for seed in range(20):
        cuts, info = grudge.partition_halves(N5, random.Random(seed))
        comps: list[list[str]] = info["components"]  # type: ignore[assignment]
        small, big = comps
        assert len(small) == 2 and len(big) == 3 and not set(small) & set(big)
        assert all(len(grudge.reachable(N5, cuts, n)) == (2 if n in small else 3) for n in N5)


def test_bridge_node_sees_everyone() -> None:
    cuts, info = grudge.bridge(N5, random.Random(3))
    hub = str(info["bridge"])
    assert grudge.reachable(N5, cuts, hub) == set(N5)
    assert all(len(grudge.reachable(N5, cuts, n)) == 3 for n in N5 if n != hub)


def test_majorities_ring_every_node_sees_a_different_majority() -> None:
    cuts, _ = grudge.majorities_ring(N5, random.Random(7))
    views = [frozenset(grudge.reachable(N5, cuts, n)) for n in N5]
    assert all(len(v) == 3 for v in views) and len(set(views)) == 5
    assert all((b, a) in cuts for a, b in cuts)
    with pytest.raises(ValueError):
        grudge.majorities_ring(N3, random.Random(1))


def test_one_way_cuts_only_one_direction() -> None:
    for seed in range(10):
        cuts, info = grudge.one_way(N3, random.Random(seed))
        assert len(cuts) == 2 and all((b, a) not in cuts for a, b in cuts)
        t = info["target"]
        assert all(t in pair and pair[0 if info["mode"] == "mute" else 1] == t for pair in cuts)


def test_schedule_is_deterministic_and_covers_every_kind() -> None:
    kinds = schedule.expand(["all"], 5)
    a = schedule.make_schedule(42, kinds, N5, 30.0)
    b = schedule.make_schedule(42, kinds, N5, 30.0)
    assert [f.to_json() for f in a] == [f.to_json() for f in b]
    assert {f.kind for f in a} == set(kinds)
    assert [f.to_json() for f in schedule.make_schedule(43, kinds, N5, 30.0)] != [f.to_json() for f in a]
    for prev, nxt in itertools.pairwise(a):
        assert nxt.at > prev.end  # one fault at a time
    assert schedule.Fault.from_json(a[0].to_json()) == a[0]


def test_schedule_fills_the_duration() -> None:
    faults = schedule.make_schedule(1, ["partition"], N3, 60.0)
    assert len(faults) >= 5 and faults[-1].end <= 60.0 + schedule.DURATIONS["partition"][1]


def test_expand_groups_and_errors() -> None:
    assert schedule.expand(["partitions"], 3) == ["partition", "isolate", "isolate-leader", "bridge", "one-way"]
    assert "ring" in schedule.expand(["partitions"], 5)
    assert schedule.expand(["kill,pause", "kill"], 3) == ["kill", "pause"]
    with pytest.raises(ValueError, match="5 nodes"):
        schedule.expand(["ring"], 3)
    with pytest.raises(ValueError, match="unknown nemesis"):
        schedule.expand(["meteor"], 3)


def test_job_specs_are_small_dags_that_can_oversubscribe() -> None:
    cmd = TaskCommand("/usr/bin/python3", "/x/task.py", "/records")
    for seed in range(30):
        job = make_job(random.Random(seed), f"j{seed}", cmd)
        names = [t["name"] for t in job["tasks"]]
        assert 2 <= len(names) <= 4
        for i, t in enumerate(job["tasks"]):
            assert set(t["depends_on"]) <= set(names[:i])
            assert t["command"][:3] == ["/usr/bin/python3", "-S", "/x/task.py"]
            assert t["resources"]["cpus"] in (0.5, 1.0, 1.5)
    a = make_job(random.Random(5), "x", cmd)
    assert a == make_job(random.Random(5), "x", cmd)
