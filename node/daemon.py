"""One node: the consensus backend, the leader loop, the agent, and the admin API, in one asyncio process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import uvloop
from aiohttp import web

from consensus.apply import Machine
from consensus.raft import RaftBackend, RaftSettings
from node.admin.app import NodeContext, make_app
from node.agent.service import AgentService
from node.agent.simulated import SimulatedAgents
from node.bridge import Bridge
from node.config import NodeConfig
from node.leader.loop import LeaderLoop

log = logging.getLogger("conclave.node")

UNSAFE_NO_FENCING_ENV = "CONCLAVE_UNSAFE_NO_FENCING"


def raft_settings(config: NodeConfig) -> RaftSettings:
    t = config.timing
    return RaftSettings(
        self_address=config.raft_address,
        partner_addresses=tuple(p.raft_address for p in config.peers if p.id != config.node_id),
        data_dir=config.data_dir / "raft",
        secret=config.secret,
        durable=config.durable,
        min_timeout_s=t.raft_min_timeout_s,
        max_timeout_s=t.raft_max_timeout_s,
        append_period_s=t.raft_append_period_s,
        connection_timeout_s=t.raft_connection_timeout_s,
        connection_retry_s=t.raft_connection_retry_s,
        leader_fallback_s=t.leader_fallback_s,
        snapshot_entries=config.snapshot_entries,
        snapshot_interval_s=config.snapshot_interval_s,
    )


async def serve(config: NodeConfig) -> int:
    """Run the node until SIGTERM/SIGINT (exit status 0) or until one of its loops fails (1)."""
    loop = asyncio.get_running_loop()
    unsafe = os.environ.get(UNSAFE_NO_FENCING_ENV) == "1"
    if unsafe:
        log.warning("%s=1: fencing is DISABLED (fault-injection only)", UNSAFE_NO_FENCING_ENV)
    if config.secret is None:
        log.warning(
            "cluster.secret is not set: the Raft port %s accepts unauthenticated peers, and pysyncobj unpickles "
            "what it receives; set a secret unless this address is reachable only by you",
            config.raft_address,
        )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    backend = RaftBackend(raft_settings(config), Machine())
    bridge = Bridge(backend, loop)
    leader = LeaderLoop(bridge, config.node_id, config.timing, unsafe_no_fencing=unsafe)
    ctx = NodeContext(config, bridge, leader, time.monotonic())
    runner = web.AppRunner(make_app(ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.api_host, config.api_port, reuse_address=True)
    await site.start()
    log.info("node %s: raft on %s, admin API on http://%s", config.node_id, config.raft_address, config.api_address)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks = [asyncio.create_task(leader.run(), name="leader")]
    agent: AgentService | None = None
    if config.agent.enabled:
        agent = AgentService(
            bridge, config.node_id, config.agent, config.timing, config.data_dir / "agent", fencing=not unsafe
        )
        (config.data_dir / "agent").mkdir(parents=True, exist_ok=True)
        tasks.append(asyncio.create_task(agent.run(), name="agent"))
    simulated: SimulatedAgents | None = None
    if config.agent.simulated > 0:
        simulated = SimulatedAgents(bridge, config.node_id, config.agent, config.timing)
        tasks.append(asyncio.create_task(simulated.run(), name="simulated-agents"))
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = False
    for t in done:
        if t is not waiter:
            failed = True  # these loops run until told to stop: ending early is a failure
            log.error("%s stopped unexpectedly: %r", t.get_name(), t.exception())
    log.info("node %s stopping", config.node_id)
    leader.stop()
    if simulated is not None:
        simulated.stop()
    if agent is not None:
        try:
            await asyncio.wait_for(agent.stop(), 8)
        except TimeoutError:
            log.warning("agent did not stop in time")
    for t in tasks:
        t.cancel()
    await runner.cleanup()
    backend.stop()
    return 1 if failed else 0


def run_node(config: NodeConfig) -> int:
    uvloop.install()
    return asyncio.run(serve(config))
