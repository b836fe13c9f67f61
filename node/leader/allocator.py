"""Mesos-style allocator. Runs only on the leader; its state is rebuilt from scratch after every failover.

It turns agents' free resources into offers for frameworks, keeps an offered resource from being offered twice,
rescinds offers that time out, and honours decline filters (refuse-seconds) until a framework revives. Nothing
here takes effect by itself: a framework's accepted offer becomes a ``Launch`` entry that ``apply`` re-checks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from consensus.spec import ZERO, Resources
from consensus.state import AgentState, State


@dataclass(slots=True)
class Offer:
    id: str
    framework_id: str
    agent_id: str
    resources: Resources
    created: float  # leader monotonic seconds
    expires: float


@dataclass(slots=True)
class Allocator:
    offer_timeout_s: float
    offers: dict[str, Offer] = field(default_factory=dict)
    # (framework, agent) -> monotonic time until which that agent is not offered to that framework
    filters: dict[tuple[str, str], float] = field(default_factory=dict)
    # resources of accepted offers whose Launch entry has not been applied yet, per agent
    in_flight: dict[str, Resources] = field(default_factory=dict)
    rescinded: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def expire(self, now: float) -> list[Offer]:
        gone = [o for o in self.offers.values() if o.expires <= now]
        for o in gone:
            del self.offers[o.id]
        self.rescinded += len(gone)
        return gone

    def rescind_agent(self, agent_id: str) -> None:
        for oid in [o.id for o in self.offers.values() if o.agent_id == agent_id]:
            del self.offers[oid]
            self.rescinded += 1

    def revive(self, framework_id: str) -> None:
        for key in [k for k in self.filters if k[0] == framework_id]:
            del self.filters[key]

    def allocate(self, state: State, framework_ids: list[str], now: float) -> list[Offer]:
        """Offer every active agent's unoffered free resources to the frameworks, round robin."""
        for key in [k for k, until in self.filters.items() if until <= now]:
            del self.filters[key]
        offered: dict[str, Resources] = {}
        for o in self.offers.values():
            offered[o.agent_id] = offered.get(o.agent_id, ZERO) + o.resources
        new: list[Offer] = []
        if not framework_ids:
            return new
        turn = 0
        for agent in state.agents.values():
            if agent.state != AgentState.ACTIVE:
                continue
            free = agent.free() - offered.get(agent.id, ZERO) - self.in_flight.get(agent.id, ZERO)
            if free.cpus_m <= 0 or free.mem_mb <= 0:
                continue
            for i in range(len(framework_ids)):
                fw = framework_ids[(turn + i) % len(framework_ids)]
                if (fw, agent.id) in self.filters:
                    continue
                offer = Offer(f"o{next(self._ids)}", fw, agent.id, free, now, now + self.offer_timeout_s)
                self.offers[offer.id] = offer
                new.append(offer)
                turn += 1
                break
        return new

    def accept(self, offer_id: str, used: Resources) -> Offer | None:
        """Consume an offer; ``used`` stays reserved as in flight until its Launch entry is applied."""
        offer = self.offers.pop(offer_id, None)
        if offer is None:
            return None
        if not used.is_zero_or_negative():
            self.in_flight[offer.agent_id] = self.in_flight.get(offer.agent_id, ZERO) + used
        return offer

    def launched(self, agent_id: str, used: Resources) -> None:
        left = self.in_flight.get(agent_id, ZERO) - used
        if left.cpus_m <= 0 and left.mem_mb <= 0 and left.disk_mb <= 0:
            self.in_flight.pop(agent_id, None)
        else:
            self.in_flight[agent_id] = left

    def decline(self, offer_id: str, refuse_s: float, now: float) -> None:
        offer = self.offers.pop(offer_id, None)
        if offer is not None and refuse_s > 0:
            self.filters[(offer.framework_id, offer.agent_id)] = now + refuse_s
