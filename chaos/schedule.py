"""Fault schedules generated from a seed (pure).

A schedule is a list of :class:`Fault` windows on the run's timeline (seconds after the fault phase starts).
Everything random is drawn from ``random.Random(seed)`` in a fixed order, so the same seed, nemesis set and
node count always produce the same schedule. Targets that only exist at run time (``"leader"``) are resolved
when the fault starts; the resolved value is written to the history.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chaos import grudge

PARTITIONS = ("partition", "isolate", "isolate-leader", "bridge", "ring", "one-way")
PROCESS = ("kill", "pause")
ALL = (*PARTITIONS, *PROCESS, "clock", "disk")
GROUPS: dict[str, tuple[str, ...]] = {
    "all": ALL,
    "partitions": PARTITIONS,
    "process": PROCESS,
    "none": (),
}
# Faults that need root (network namespaces, tmpfs mounts).
NEEDS_NETNS = ("disk",)

DURATIONS: dict[str, tuple[float, float]] = {
    "partition": (3.0, 8.0),
    "isolate": (3.0, 8.0),
    "isolate-leader": (3.0, 8.0),
    "bridge": (3.0, 8.0),
    "ring": (3.0, 8.0),
    "one-way": (3.0, 8.0),
    "kill": (1.0, 5.0),
    "pause": (3.0, 10.0),
    "clock": (4.0, 8.0),
    "disk": (3.0, 7.0),
}
# Forward jumps only: libfaketime moves CLOCK_MONOTONIC with the offset, and a monotonic clock that goes
# back is not a fault real machines have (see chaos/README.md, "Clock skew").
CLOCK_JUMPS = (2.0, 5.0, 15.0, 60.0)


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float
    duration: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.at + self.duration

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "at": self.at, "duration": self.duration, "params": self.params}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Fault:
        return Fault(str(d["kind"]), float(d["at"]), float(d["duration"]), dict(d.get("params", {})))


def expand(names: Sequence[str], n_nodes: int) -> list[str]:
    """Turn ``["partitions", "kill"]`` into concrete nemesis names, in a stable order, validated."""
    out: list[str] = []
    for name in names:
        for part in name.split(","):
            part = part.strip()
            if not part:
                continue
            members = GROUPS.get(part, (part,))
            for m in members:
                if m not in ALL:
                    raise ValueError(f"unknown nemesis {m!r}; choose from {', '.join((*ALL, *GROUPS))}")
                if m == "ring" and n_nodes < 5:
                    if part == m:
                        raise ValueError("nemesis 'ring' needs at least 5 nodes (--nodes 5)")
                    continue
                if m not in out:
                    out.append(m)
    return out


def _params(kind: str, nodes: Sequence[str], rng: random.Random) -> dict[str, Any]:
    if kind == "partition":
        cuts, info = grudge.partition_halves(nodes, rng)
    elif kind == "isolate":
        cuts, info = grudge.isolate(nodes, rng.choice(list(nodes)))
    elif kind == "bridge":
        cuts, info = grudge.bridge(nodes, rng)
    elif kind == "ring":
        cuts, info = grudge.majorities_ring(nodes, rng)
    elif kind == "one-way":
        cuts, info = grudge.one_way(nodes, rng)
    elif kind == "isolate-leader":
        return {"target": "leader"}
    elif kind in ("kill", "pause"):
        return {"target": "leader" if rng.random() < 0.3 else rng.choice(list(nodes))}
    elif kind == "clock":
        return {"target": rng.choice(list(nodes)), "jump_s": rng.choice(CLOCK_JUMPS)}
    elif kind == "disk":
        return {"target": rng.choice(list(nodes))}
    else:
        raise ValueError(f"unknown nemesis {kind!r}")
    return {**info, "cuts": sorted([a, b] for a, b in cuts)}


def make_schedule(
    seed: int,
    kinds: Sequence[str],
    nodes: Sequence[str],
    duration: float,
    warmup: float = 2.0,
    gap: tuple[float, float] = (1.5, 4.0),
) -> list[Fault]:
    """Fault windows covering ``[warmup, ~duration]``; every kind appears at least once, one fault at a time."""
    rng = random.Random(seed)
    if not kinds:
        return []
    first = list(kinds)
    rng.shuffle(first)
    faults: list[Fault] = []
    t = warmup
    i = 0
    while True:
        kind = first[i] if i < len(first) else rng.choice(list(kinds))
        lo, hi = DURATIONS[kind]
        d = round(rng.uniform(lo, hi), 2)
        params = _params(kind, nodes, rng)
        if i >= len(first) and t + d > duration:
            break
        faults.append(Fault(kind, round(t, 2), d, params))
        t += d + rng.uniform(*gap)
        i += 1
    return faults


def schedule_end(faults: Sequence[Fault]) -> float:
    return max((f.end for f in faults), default=0.0)
