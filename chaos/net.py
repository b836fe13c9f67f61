"""Network backends behind one interface.

``netns`` (root): every node in its own network namespace, all attached by veths to one bridge that lives in
a namespace of its own, plus a *client* namespace on the same bridge from which the harness talks to every
node's API (the harness's event-loop thread enters it with ``setns``; nothing is added to the root
namespace, so no packet can leave the machine). Partitions are directed ``(src, dst)`` drop rules in one
nftables set on the bridge (``bridge`` family), replaced in one ``nft -f`` transaction. Only node<->node
pairs are ever in the set, so the harness always reaches every node.

``proxy`` (no root): nodes on 127.0.0.1; every directed peer link goes through an asyncio TCP proxy that can
stall each direction (see :mod:`chaos.proxy`).
"""

from __future__ import annotations

import abc
import hashlib
import os
import random
import socket
import threading
from collections.abc import Sequence

from chaos import sysutil
from chaos.grudge import Cuts
from chaos.proxy import ProxyEngine


class Network(abc.ABC):
    kind: str = "?"

    def __init__(self, prefix: str, nodes: Sequence[str], registry: sysutil.Registry) -> None:
        self.prefix = prefix
        self.nodes = list(nodes)
        self.registry = registry
        self.cuts: Cuts = frozenset()

    @abc.abstractmethod
    def setup(self) -> None: ...

    @abc.abstractmethod
    def teardown(self) -> None: ...

    @abc.abstractmethod
    def raft_address(self, node: str) -> str:
        """The address ``node`` binds for Raft."""

    @abc.abstractmethod
    def api_address(self, node: str) -> str:
        """The address ``node`` binds for its HTTP API."""

    @abc.abstractmethod
    def peer_raft_address(self, viewer: str, node: str) -> str:
        """The Raft address ``viewer`` lists for ``node`` in its config."""

    @abc.abstractmethod
    def peer_api_url(self, viewer: str, node: str) -> str:
        """The API URL ``viewer`` lists for ``node`` in its config."""

    def client_url(self, node: str) -> str:
        """Where the harness reaches ``node``'s API (never cut)."""
        return f"http://{self.api_address(node)}"

    def wrap(self, node: str, argv: list[str]) -> list[str]:
        """The command line that runs ``argv`` inside ``node``'s network."""
        return argv

    def enter_client_side(self) -> None:
        """Called first thing in the harness's event-loop thread."""
        return None

    @abc.abstractmethod
    def set_cuts(self, cuts: Cuts) -> None:
        """Replace every cut at once."""

    def heal(self) -> None:
        self.set_cuts(frozenset())


class NetnsNetwork(Network):
    kind = "netns"
    TABLE = "chaos"

    def __init__(self, prefix: str, nodes: Sequence[str], registry: sysutil.Registry) -> None:
        super().__init__(prefix, nodes, registry)
        digest = hashlib.sha256(prefix.encode()).digest()
        self.subnet = f"10.{200 + digest[0] % 50}.{digest[1]}"
        self.br_ns = f"{prefix}-br"
        self.cl_ns = f"{prefix}-cl"
        self.ip = {n: f"{self.subnet}.{i + 1}" for i, n in enumerate(self.nodes)}
        self.client_ip = f"{self.subnet}.254"
        self.raft_port = 7100
        self.api_port = 8100

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def _ip(self, *args: str) -> None:
        sysutil.run(["ip", *args])

    def _add_ns(self, name: str) -> None:
        self._ip("netns", "add", name)
        self.registry.add("netns", name)
        self._ip("-n", name, "link", "set", "lo", "up")

    def _attach(self, ns: str, ifname: str, port: str, addr: str) -> None:
        self._ip("link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", self.br_ns)
        self._ip("-n", self.br_ns, "link", "set", port, "master", "br0", "up")
        self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
        self._ip("-n", ns, "link", "set", ifname, "up")

    def setup(self) -> None:
        self._add_ns(self.br_ns)
        self._ip("-n", self.br_ns, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.br_ns, "link", "set", "br0", "up")
        self._add_ns(self.cl_ns)
        self._attach(self.cl_ns, "eth0", "vcl", self.client_ip)
        for i, n in enumerate(self.nodes):
            self._add_ns(self.ns(n))
            self._attach(self.ns(n), "eth0", f"v{i + 1}", self.ip[n])
        ruleset = (
            f"table bridge {self.TABLE} {{\n"
            "  set cuts { type ipv4_addr . ipv4_addr; }\n"
            "  chain forward {\n"
            "    type filter hook forward priority 0; policy accept;\n"
            "    ip saddr . ip daddr @cuts counter drop\n"
            "  }\n"
            "}\n"
        )
        self._nft(ruleset)

    def _nft(self, script: str) -> None:
        sysutil.run(["ip", "netns", "exec", self.br_ns, "nft", "-f", "-"], input_text=script)

    def set_cuts(self, cuts: Cuts) -> None:
        lines = [f"flush set bridge {self.TABLE} cuts"]
        if cuts:
            elems = ", ".join(f"{self.ip[a]} . {self.ip[b]}" for a, b in sorted(cuts))
            lines.append(f"add element bridge {self.TABLE} cuts {{ {elems} }}")
        self._nft("\n".join(lines) + "\n")
        self.cuts = frozenset(cuts)

    def current_set(self) -> set[tuple[str, str]]:
        """The cuts as the kernel has them (for tests)."""
        out = sysutil.run(["ip", "netns", "exec", self.br_ns, "nft", "list", "set", "bridge", self.TABLE, "cuts"])
        back = {v: k for k, v in self.ip.items()}
        pairs: set[tuple[str, str]] = set()
        text = out.stdout
        if "elements" in text:
            body = text.split("elements = {", 1)[1].split("}", 1)[0]
            for item in body.replace("\n", " ").split(","):
                a, _, b = item.strip().partition(" . ")
                if a and b:
                    pairs.add((back[a.strip()], back[b.strip()]))
        return pairs

    def teardown(self) -> None:
        for ns in [*(self.ns(n) for n in self.nodes), self.cl_ns, self.br_ns]:
            sysutil.destroy_netns(ns)
            self.registry.remove("netns", ns)

    def raft_address(self, node: str) -> str:
        return f"{self.ip[node]}:{self.raft_port}"

    def api_address(self, node: str) -> str:
        return f"{self.ip[node]}:{self.api_port}"

    def peer_raft_address(self, viewer: str, node: str) -> str:
        return self.raft_address(node)

    def peer_api_url(self, viewer: str, node: str) -> str:
        return f"http://{self.api_address(node)}"

    def wrap(self, node: str, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns(node)}", "--", *argv]

    def enter_client_side(self) -> None:
        sysutil.setns_current_thread(f"/run/netns/{self.cl_ns}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ProxyNetwork(Network):
    """Nodes on 127.0.0.1; each directed peer link (Raft and API) through a stallable proxy.

    pysyncobj lets only the node with the greater address (compared as strings) open the connection of a
    pair, and identifies the connecting node by the address it announces in its first frame. Every port
    here has five digits, so string order is numeric order; the layout below makes exactly one side of each
    pair connect, and the proxy rewrites the announced address to the one the acceptor knows the dialer by.
    Peers must run without ``cluster.secret`` in this mode (the announcement is then plain pickle+zlib).
    """

    kind = "proxy"

    def __init__(self, prefix: str, nodes: Sequence[str], registry: sysutil.Registry) -> None:
        super().__init__(prefix, nodes, registry)
        n = len(self.nodes)
        span = 5 * n * n + 10
        rng = random.SystemRandom()
        for _ in range(200):
            base = rng.randrange(20000, 64000 - span)
            self._layout(base)
            if all(_port_free(p) for p in self._all_ports()):
                break
        else:
            raise RuntimeError("no free block of loopback ports for the proxy network")
        self.engine = ProxyEngine()
        self._thread: threading.Thread | None = None

    def _layout(self, base: int) -> None:
        n = len(self.nodes)
        idx = {node: i for i, node in enumerate(self.nodes)}
        self.base = base
        self.raft_real = {node: base + n * n + i for node, i in idx.items()}
        self.api_real = {node: base + 2 * n * n + n + i for node, i in idx.items()}
        self.raft_link: dict[tuple[str, str], int] = {}
        self.api_link: dict[tuple[str, str], int] = {}
        for v, i in idx.items():
            for w, j in idx.items():
                if v == w:
                    continue
                # j < i: v dials w, so v's view of w must sort below v's own port; j > i: above it.
                self.raft_link[(v, w)] = base + i * n + j if j < i else base + 3 * n * n + i * n + j
                self.api_link[(v, w)] = base + 4 * n * n + i * n + j

    def _all_ports(self) -> list[int]:
        return [*self.raft_real.values(), *self.api_real.values(), *self.raft_link.values(),
                *self.api_link.values()]

    def setup(self) -> None:
        for (v, w), port in self.raft_link.items():
            self.engine.add_link(
                v, w, ("127.0.0.1", port), ("127.0.0.1", self.raft_real[w]),
                announce=(f"127.0.0.1:{self.raft_real[v]}", f"127.0.0.1:{self.raft_link[(w, v)]}"),
            )
        for (v, w), port in self.api_link.items():
            self.engine.add_link(v, w, ("127.0.0.1", port), ("127.0.0.1", self.api_real[w]))
        self.engine.start()

    def teardown(self) -> None:
        self.engine.stop()

    def set_cuts(self, cuts: Cuts) -> None:
        self.engine.set_cuts(cuts)
        self.cuts = frozenset(cuts)

    def raft_address(self, node: str) -> str:
        return f"127.0.0.1:{self.raft_real[node]}"

    def api_address(self, node: str) -> str:
        return f"127.0.0.1:{self.api_real[node]}"

    def peer_raft_address(self, viewer: str, node: str) -> str:
        if viewer == node:
            return self.raft_address(node)
        return f"127.0.0.1:{self.raft_link[(viewer, node)]}"

    def peer_api_url(self, viewer: str, node: str) -> str:
        if viewer == node:
            return f"http://{self.api_address(node)}"
        return f"http://127.0.0.1:{self.api_link[(viewer, node)]}"


def make_network(kind: str, prefix: str, nodes: Sequence[str], registry: sysutil.Registry) -> Network:
    if kind == "netns":
        return NetnsNetwork(prefix, nodes, registry)
    if kind == "proxy":
        return ProxyNetwork(prefix, nodes, registry)
    raise ValueError(f"unknown network backend {kind!r} (netns or proxy)")


def default_backend() -> str:
    return "netns" if os.geteuid() == 0 else "proxy"
