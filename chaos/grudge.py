"""Partition shapes as sets of directed cuts (pure).

A *cut* ``(src, dst)`` means packets from node ``src`` to node ``dst`` are dropped (netns backend) or stalled
(proxy backend). A two-way partition is both directions; a one-way cut is just one. Nodes are named by their
ids (``"n1"``...). Every function here is deterministic given its ``random.Random``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

Cut = tuple[str, str]
Cuts = frozenset[Cut]


def between(components: Sequence[Iterable[str]]) -> Cuts:
    """Both directions between every pair of nodes that sit in different components."""
    comps = [list(c) for c in components]
    cuts: set[Cut] = set()
    for i, a_side in enumerate(comps):
        for j, b_side in enumerate(comps):
            if i == j:
                continue
            for a in a_side:
                for b in b_side:
                    if a != b:
                        cuts.add((a, b))
    return frozenset(cuts)


def complete_except(nodes: Sequence[str], links: Iterable[tuple[str, str]]) -> Cuts:
    """Cut every directed pair except the given undirected links (used for rings)."""
    keep: set[Cut] = set()
    for a, b in links:
        keep.add((a, b))
        keep.add((b, a))
    return frozenset((a, b) for a in nodes for b in nodes if a != b and (a, b) not in keep)


def halves(nodes: Sequence[str], rng: random.Random) -> tuple[list[str], list[str]]:
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    k = len(shuffled) // 2
    return sorted(shuffled[:k]), sorted(shuffled[k:])


def partition_halves(nodes: Sequence[str], rng: random.Random) -> tuple[Cuts, dict[str, object]]:
    minority, majority = halves(nodes, rng)
    return between([minority, majority]), {"components": [minority, majority]}


def isolate(nodes: Sequence[str], target: str) -> tuple[Cuts, dict[str, object]]:
    rest = sorted(n for n in nodes if n != target)
    return between([[target], rest]), {"components": [[target], rest], "target": target}


def bridge(nodes: Sequence[str], rng: random.Random) -> tuple[Cuts, dict[str, object]]:
    """Two halves that cannot talk, and one node that talks to both (Jepsen's ``bridge``)."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    mid = len(shuffled) // 2
    left, hub, right = sorted(shuffled[:mid]), shuffled[mid], sorted(shuffled[mid + 1 :])
    cuts = between([left, right])
    return cuts, {"components": [[*left, hub], [hub, *right]], "bridge": hub}


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> tuple[Cuts, dict[str, object]]:
    """Every node sees a majority (itself and its ring neighbours), but no two nodes see the same one.

    Needs at least 5 nodes: with 3, each node's two neighbours are everyone and nothing would be cut.
    """
    n = len(nodes)
    if n < 5:
        raise ValueError(f"majorities-ring needs at least 5 nodes, got {n}")
    ring = list(nodes)
    rng.shuffle(ring)
    majority = n // 2 + 1
    reach = majority // 2  # neighbours on each side, so that 1 + 2 * reach >= majority
    links = [(ring[i], ring[(i + d) % n]) for i in range(n) for d in range(1, reach + 1)]
    return complete_except(nodes, links), {"ring": ring, "reach": reach}


def one_way(nodes: Sequence[str], rng: random.Random) -> tuple[Cuts, dict[str, object]]:
    """One node can receive but not send (``mute``), or send but not receive (``deaf``)."""
    target = rng.choice(list(nodes))
    mode = rng.choice(["mute", "deaf"])
    others = [n for n in nodes if n != target]
    if mode == "mute":
        cuts = frozenset((target, o) for o in others)
    else:
        cuts = frozenset((o, target) for o in others)
    return cuts, {"target": target, "mode": mode}


def reachable(nodes: Sequence[str], cuts: Cuts, src: str) -> set[str]:
    """Nodes that ``src`` can send to directly (itself included)."""
    return {d for d in nodes if d == src or (src, d) not in cuts}
