"""Node configuration: one TOML file per node, validated into frozen dataclasses.

Every problem is reported as a :class:`ConfigError` naming the key, never as a traceback.

Example::

    [node]
    id = "n1"
    data_dir = "/var/lib/conclave"
    raft_address = "10.0.0.1:7100"   # bound exactly; pysyncobj never listens on 0.0.0.0
    api_address = "10.0.0.1:8100"

    [cluster]
    token = "long-random-admin-token"   # or token_file = "/etc/conclave/token"
    secret = "long-random-raft-secret"  # encrypts and authenticates peer traffic (or secret_file)

    [[cluster.peers]]                   # every voter, this node included
    id = "n1"
    raft_address = "10.0.0.1:7100"
    api_url = "http://10.0.0.1:8100"

    [agent]
    enabled = true
    cpus = 4.0
    mem_mb = 4096
    disk_mb = 20480
    task_types = ["env_setup", "input_staging", "job_submission", "monitoring", "output_staging"]
    [agent.attributes]
    zone = "a"

    [timing]                            # all optional; see README "Configuration"
    heartbeat_interval_s = 0.5
    agent_timeout_s = 6.0
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ConfigError(ValueError):
    """A configuration problem, phrased for the operator."""


@dataclass(frozen=True)
class Peer:
    id: str
    raft_address: str
    api_url: str


@dataclass(frozen=True)
class AgentConfig:
    enabled: bool = True
    cpus: float = 2.0
    mem_mb: int = 2048
    disk_mb: int = 10240
    task_types: tuple[str, ...] = (
        "env_setup",
        "input_staging",
        "job_submission",
        "monitoring",
        "output_staging",
    )
    attributes: dict[str, str] = field(default_factory=dict)
    # Simulated agents (benchmarks): this many extra agents in this process, registered and reporting through
    # the real log, that never run processes. Each uses the resources, task types and attributes above.
    simulated: int = 0
    simulated_task_s: float = 0.0  # a simulated attempt reports FINISHED this long after RUNNING
    simulated_heartbeat_s: float = 2.0  # heartbeat period of an otherwise idle simulated agent


@dataclass(frozen=True)
class Timing:
    """Timeouts, in seconds. Defaults are chosen together; see README "Failure model"."""

    heartbeat_interval_s: float = 0.5
    # An agent whose heartbeat has not been committed for this long is declared unreachable by the leader.
    agent_timeout_s: float = 6.0
    # A new leader waits this long after taking over before declaring any agent lost.
    leader_grace_s: float = 6.0
    # An agent that cannot get a heartbeat committed for this long kills its own attempts.
    agent_lease_s: float = 4.0
    offer_timeout_s: float = 2.0
    decline_refuse_s: float = 1.0
    allocation_interval_s: float = 0.05
    # Elections, measured on 3 nodes sharing 2 cores (python -m bench): 0.4-0.9 s gave SIGKILL -> first launch
    # p50 0.53 s, p99 1.4 s and 1 refused write in a 5-minute soak; 0.2-0.5 s gave p50 0.31 s but 38 spurious
    # elections in the same soak (a follower whose tick thread stalls past its timeout starts an election).
    # pysyncobj's 0.4-1.4 s gave p50 1.8 s. Appends must come > 3x per minimum timeout.
    raft_min_timeout_s: float = 0.4
    raft_max_timeout_s: float = 0.9
    raft_append_period_s: float = 0.05
    raft_connection_timeout_s: float = 1.5
    # pysyncobj waits this long before reconnecting a dropped peer link (default 5 s, which stalls elections)
    raft_connection_retry_s: float = 0.1
    # A leader that has lost contact with a quorum steps down after this long (pysyncobj defaults to 30 s).
    leader_fallback_s: float = 2.0
    request_timeout_s: float = 5.0
    # Finished jobs (complete, failed, cancelled) are forgotten this long after they ended, with their attempts,
    # audit trail and idempotency keys, so the replicated state stays bounded under a steady load.
    job_retention_s: float = 86_400.0


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    raft_address: str
    api_address: str
    token: str
    secret: str | None
    peers: tuple[Peer, ...]
    agent: AgentConfig
    timing: Timing
    durable: bool = True
    snapshot_entries: int = 20_000  # compact the log into a snapshot after this many entries ...
    snapshot_interval_s: float = 60.0  # ... or after this long

    @property
    def api_host(self) -> str:
        return split_address(self.api_address, "node.api_address")[0]

    @property
    def api_port(self) -> int:
        return split_address(self.api_address, "node.api_address")[1]

    def peer(self, node_id: str) -> Peer | None:
        for p in self.peers:
            if p.id == node_id:
                return p
        return None

    def peer_by_raft(self, raft_address: str) -> Peer | None:
        for p in self.peers:
            if p.raft_address == raft_address:
                return p
        return None


def split_address(value: str, key: str) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: port {port} is out of range 1-65535")
    if host in ("0.0.0.0", "::", "[::]"):
        raise ConfigError(f"{key}: refusing to bind a wildcard address ({host}); name the interface's address")
    return host, port


def _table(raw: dict[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"missing [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table")
    return value


def _str(t: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = t.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key}: required")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: expected a non-empty string")
    return value


def _num(t: dict[str, Any], key: str, where: str, default: float, minimum: float = 0.0) -> float:
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: expected a number")
    if value < minimum:
        raise ConfigError(f"{where}.{key}: must be >= {minimum}")
    return float(value)


def _secret(t: dict[str, Any], key: str, where: str, base: Path) -> str | None:
    inline = t.get(key)
    path = t.get(f"{key}_file")
    if inline is not None and path is not None:
        raise ConfigError(f"{where}: give {key} or {key}_file, not both")
    if path is not None:
        if not isinstance(path, str):
            raise ConfigError(f"{where}.{key}_file: expected a path")
        p = (base / path) if not Path(path).is_absolute() else Path(path)
        try:
            value = p.read_text().strip()
        except OSError as e:
            raise ConfigError(f"{where}.{key}_file: cannot read {p}: {e.strerror}") from None
        if not value:
            raise ConfigError(f"{where}.{key}_file: {p} is empty")
        return value
    if inline is None:
        return None
    if not isinstance(inline, str) or not inline:
        raise ConfigError(f"{where}.{key}: expected a non-empty string")
    return inline


def parse_config(raw: dict[str, Any], base: Path = Path(".")) -> NodeConfig:
    node = _table(raw, "node")
    unknown = set(raw) - {"node", "cluster", "agent", "timing"}
    if unknown:
        raise ConfigError(f"unknown table(s): {', '.join(sorted(unknown))}")
    node_id = _str(node, "id", "node")
    if not _ID_RE.match(node_id):
        raise ConfigError(f"node.id: {node_id!r} must match {_ID_RE.pattern}")
    data_dir = Path(_str(node, "data_dir", "node"))
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    raft_address = _str(node, "raft_address", "node")
    split_address(raft_address, "node.raft_address")
    api_address = _str(node, "api_address", "node")
    split_address(api_address, "node.api_address")
    durable = node.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigError("node.durable: expected true or false")
    snapshot_entries = int(_num(node, "snapshot_entries", "node", 20_000, 10))
    snapshot_interval_s = _num(node, "snapshot_interval_s", "node", 60.0, 1.0)

    cluster = _table(raw, "cluster")
    token = _secret(cluster, "token", "cluster", base)
    if token is None:
        raise ConfigError("cluster.token: required (every write endpoint needs a bearer token)")
    if len(token) < 8:
        raise ConfigError("cluster.token: must be at least 8 characters")
    secret = _secret(cluster, "secret", "cluster", base)
    peers_raw = cluster.get("peers")
    if not isinstance(peers_raw, list) or not peers_raw:
        raise ConfigError("cluster.peers: expected a non-empty array of [[cluster.peers]] tables")
    peers: list[Peer] = []
    for i, p in enumerate(peers_raw):
        where = f"cluster.peers[{i}]"
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: expected a table")
        pid = _str(p, "id", where)
        if not _ID_RE.match(pid):
            raise ConfigError(f"{where}.id: {pid!r} must match {_ID_RE.pattern}")
        ra = _str(p, "raft_address", where)
        split_address(ra, f"{where}.raft_address")
        url = _str(p, "api_url", where)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.api_url: expected an http:// or https:// URL")
        peers.append(Peer(pid, ra, url.rstrip("/")))
    ids = [p.id for p in peers]
    if len(set(ids)) != len(ids):
        raise ConfigError("cluster.peers: duplicate id")
    addrs = [p.raft_address for p in peers]
    if len(set(addrs)) != len(addrs):
        raise ConfigError("cluster.peers: duplicate raft_address")
    me = [p for p in peers if p.id == node_id]
    if not me:
        raise ConfigError(f"cluster.peers: this node ({node_id}) must be listed")
    if me[0].raft_address != raft_address:
        raise ConfigError(
            f"cluster.peers: entry for {node_id} has raft_address {me[0].raft_address}, "
            f"but node.raft_address is {raft_address}"
        )

    agent_raw = _table(raw, "agent", required=False)
    enabled = agent_raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError("agent.enabled: expected true or false")
    task_types = agent_raw.get("task_types", list(AgentConfig.task_types))
    if not isinstance(task_types, list) or not all(isinstance(t, str) and t for t in task_types):
        raise ConfigError("agent.task_types: expected an array of strings")
    attrs = agent_raw.get("attributes", {})
    if not isinstance(attrs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
        raise ConfigError("agent.attributes: expected a table of strings")
    mem = _num(agent_raw, "mem_mb", "agent", AgentConfig.mem_mb)
    disk = _num(agent_raw, "disk_mb", "agent", AgentConfig.disk_mb)
    agent = AgentConfig(
        enabled=enabled,
        cpus=_num(agent_raw, "cpus", "agent", AgentConfig.cpus),
        mem_mb=int(mem),
        disk_mb=int(disk),
        task_types=tuple(task_types),
        attributes=dict(attrs),
        simulated=int(_num(agent_raw, "simulated", "agent", AgentConfig.simulated)),
        simulated_task_s=_num(agent_raw, "simulated_task_s", "agent", AgentConfig.simulated_task_s),
        simulated_heartbeat_s=_num(
            agent_raw, "simulated_heartbeat_s", "agent", AgentConfig.simulated_heartbeat_s, 0.01
        ),
    )

    timing_raw = _table(raw, "timing", required=False)
    defaults = Timing()
    known = set(defaults.__dataclass_fields__)
    extra = set(timing_raw) - known
    if extra:
        raise ConfigError(f"timing: unknown key(s): {', '.join(sorted(extra))}")
    timing = Timing(**{k: _num(timing_raw, k, "timing", getattr(defaults, k), 0.001) for k in timing_raw})
    if timing.raft_min_timeout_s >= timing.raft_max_timeout_s:
        raise ConfigError("timing: raft_min_timeout_s must be below raft_max_timeout_s")
    if timing.raft_min_timeout_s <= 3 * timing.raft_append_period_s:
        raise ConfigError("timing: raft_min_timeout_s must exceed 3 x raft_append_period_s (heartbeats per election)")
    if timing.raft_connection_timeout_s < timing.raft_max_timeout_s:
        raise ConfigError("timing: raft_connection_timeout_s must be at least raft_max_timeout_s")
    if timing.leader_fallback_s <= timing.raft_append_period_s:
        raise ConfigError("timing: leader_fallback_s must exceed raft_append_period_s")
    if timing.agent_lease_s >= timing.agent_timeout_s:
        raise ConfigError("timing: agent_lease_s must be below agent_timeout_s (fencing needs the margin)")
    return NodeConfig(
        node_id=node_id,
        data_dir=data_dir,
        raft_address=raft_address,
        api_address=api_address,
        token=token,
        secret=secret,
        peers=tuple(peers),
        agent=agent,
        timing=timing,
        durable=durable,
        snapshot_entries=snapshot_entries,
        snapshot_interval_s=snapshot_interval_s,
    )


def load_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    return parse_config(raw, base=p.parent)
