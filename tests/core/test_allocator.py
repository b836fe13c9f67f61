"""The leader's allocator and the workflow framework, against in-memory state (no I/O, explicit time)."""

from __future__ import annotations

from consensus.apply import WORKFLOW_FRAMEWORK, Machine
from consensus.commands import LeaderElected, RegisterAgent, SubmitJob
from consensus.spec import Resources
from node.leader.allocator import Allocator
from node.leader.workflow import place


def machine_with_agents(n: int = 2) -> Machine:
    m = Machine()
    assert m.apply_command(LeaderElected(1, "n1", 1)).ok
    for i in range(n):
        assert m.apply_command(RegisterAgent(f"a{i}", "x", 1000, 1000, 1000, ["t"], {}, 1)).ok
    return m


def test_outstanding_resources_are_never_offered_twice() -> None:
    m = machine_with_agents()
    alloc = Allocator(offer_timeout_s=5)
    first = alloc.allocate(m.state, [WORKFLOW_FRAMEWORK, "other"], now=0.0)
    assert {o.agent_id for o in first} == {"a0", "a1"}
    assert alloc.allocate(m.state, [WORKFLOW_FRAMEWORK, "other"], now=1.0) == []
    # two frameworks share the agents round robin, each agent offered once
    assert len({o.framework_id for o in first}) == 2


def test_offers_time_out_and_are_rescinded_then_reoffered() -> None:
    m = machine_with_agents(1)
    alloc = Allocator(offer_timeout_s=2)
    (offer,) = alloc.allocate(m.state, [WORKFLOW_FRAMEWORK], now=0.0)
    assert alloc.expire(now=1.9) == []
    assert [o.id for o in alloc.expire(now=2.0)] == [offer.id]
    assert alloc.rescinded == 1
    (again,) = alloc.allocate(m.state, [WORKFLOW_FRAMEWORK], now=2.0)
    assert again.id != offer.id and again.resources == offer.resources


def test_decline_filters_until_refuse_seconds_or_revive() -> None:
    m = machine_with_agents(1)
    alloc = Allocator(offer_timeout_s=10)
    (offer,) = alloc.allocate(m.state, [WORKFLOW_FRAMEWORK], now=0.0)
    alloc.decline(offer.id, refuse_s=1.0, now=0.0)
    assert alloc.allocate(m.state, [WORKFLOW_FRAMEWORK], now=0.5) == []
    assert len(alloc.allocate(m.state, [WORKFLOW_FRAMEWORK], now=1.0)) == 1
    (o2,) = alloc.offers.values()
    alloc.decline(o2.id, refuse_s=60.0, now=1.0)
    alloc.revive(WORKFLOW_FRAMEWORK)
    assert len(alloc.allocate(m.state, [WORKFLOW_FRAMEWORK], now=1.1)) == 1


def test_accepted_resources_stay_reserved_until_the_launch_applies() -> None:
    m = machine_with_agents(1)
    spec = {
        "name": "j",
        "tasks": [{"name": f"t{i}", "command": ["x"], "resources": {"cpus": 0.4, "mem_mb": 10}} for i in range(3)],
    }
    assert m.apply_command(SubmitJob("r", "j", WORKFLOW_FRAMEWORK, spec, 2)).ok
    alloc = Allocator(offer_timeout_s=10)
    offers = alloc.allocate(m.state, [WORKFLOW_FRAMEWORK], now=0.0)
    placements, declines = place(m.state, offers, now_ms=2)
    assert len(placements) == 2 and declines == []  # 0.4 + 0.4 fit in 1 cpu, the third does not
    used = Resources(800, 20, 20)
    alloc.accept(offers[0].id, used)
    again = alloc.allocate(m.state, [WORKFLOW_FRAMEWORK], now=0.1)
    assert again and again[0].resources == Resources(200, 980, 980)  # the rest, not what is in flight
