"""The admin API: parse, call, format. No scheduling logic lives here.

Writes need ``Authorization: Bearer <token>``; bodies over 1 MiB get 413; every error is
``{"error": {"code", "message"}}`` and changes nothing. Writes work on any node: pysyncobj forwards a
follower's proposal to the leader, and the answer comes only once the entry is applied here, so a client reads
its own write from the node it asked.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from consensus.apply import WORKFLOW_FRAMEWORK, Result
from consensus.commands import CancelJob, Command, DrainAgent, RetryJob, SubmitJob
from consensus.spec import SpecError, parse_job
from node.admin import views
from node.bridge import Bridge, NotCommitted
from node.config import NodeConfig
from node.leader.loop import LeaderLoop, now_ms

log = logging.getLogger("conclave.admin")

MAX_BODY = 1024 * 1024
RETRY_AFTER_S = 1
_ROLES = {0: "follower", 1: "candidate", 2: "leader"}
_STATUS_FOR_CODE = {"invalid": 400, "not_found": 404, "conflict": 409}


@dataclass
class NodeContext:
    config: NodeConfig
    bridge: Bridge
    leader: LeaderLoop
    started: float


CTX: web.AppKey[NodeContext] = web.AppKey("conclave_ctx", NodeContext)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "too_large", f"request body exceeds {MAX_BODY} bytes")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        return error_response(e.status, code, e.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the node's log")


def auth_middleware(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise ApiError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check


def _ctx(request: web.Request) -> NodeContext:
    return request.app[CTX]


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "too_large", f"request body exceeds {MAX_BODY} bytes")
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {e}") from None


def _leader_id(ctx: NodeContext) -> str | None:
    addr = ctx.bridge.backend.leader_address()
    if addr is None:
        return None
    peer = ctx.config.peer_by_raft(addr)
    return peer.id if peer else addr


async def _commit(ctx: NodeContext, cmd: Command) -> Result:
    backend = ctx.bridge.backend
    if _leader_id(ctx) is None:
        raise ApiError(503, "no_leader", "no leader is known; retry shortly", {"Retry-After": str(RETRY_AFTER_S)})
    if not backend.has_quorum():
        # a node cut off from a majority cannot get anything committed; say so now, not after the timeout
        raise ApiError(
            503, "no_quorum", "this node cannot reach a majority; retry shortly", {"Retry-After": str(RETRY_AFTER_S)}
        )
    try:
        result = await ctx.bridge.propose(cmd, ctx.config.timing.request_timeout_s)
    except NotCommitted as e:
        raise ApiError(
            503,
            "not_committed",
            f"the write was not confirmed ({e.code}); it may still apply — retry with the same Idempotency-Key",
            {"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    if not result.ok:
        raise ApiError(_STATUS_FOR_CODE.get(result.code, 409), result.code, result.message)
    return result


def _path_id(request: web.Request, key: str) -> str:
    value = request.match_info[key]
    if not value or len(value) > 128:
        raise ApiError(400, "invalid", f"bad {key}")
    return value


# ---------------------------------------------------------------------------------------------- handlers


async def get_status(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    backend = ctx.bridge.backend
    raft = backend.raft_status()
    if request.query.get("digest", "1") == "0":  # hashing a large state is costly: pollers can skip it
        digest, applied = None, ctx.bridge.read(lambda st: st.applied)
    else:
        digest, applied = ctx.bridge.digest_and_index()
    role = _ROLES.get(int(raft.get("state", 0)), "follower")  # type: ignore[call-overload]
    body = {
        "node_id": ctx.config.node_id,
        "role": role,
        "leader_id": _leader_id(ctx),
        "term": backend.term(),
        "applied_index": applied,
        "state_digest": digest,
        "has_quorum": backend.has_quorum(),
        "acting_leader": ctx.leader.is_acting(),
        "last_apply_age_s": round(time.monotonic() - ctx.bridge.last_apply_monotonic, 3),
        "commit_index": raft.get("commit_idx"),
        "journal_syncs": raft.get("fsyncs"),
        "stale_appends_kept": raft.get("stale_appends_kept"),
        "snapshots_written": raft.get("snapshots"),
        "group_commit": {"entries": ctx.bridge.batches, "commands": ctx.bridge.batched_commands},
        "durable": ctx.config.durable,
        "uptime_s": round(time.monotonic() - ctx.started, 1),
        "leader_stats": vars(ctx.leader.stats) if ctx.leader.is_acting() else None,
    }
    return web.json_response(body)


async def list_jobs(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    state_filter = request.query.get("state")
    try:
        limit = int(request.query.get("limit", "1000"))
    except ValueError:
        raise ApiError(400, "invalid", "limit must be an integer") from None

    def collect(st: Any) -> list[dict[str, Any]]:
        out = []
        for job in reversed(st.jobs.values()):
            if state_filter and str(job.state) != state_filter:
                continue
            out.append(views.job_summary(job))
            if len(out) >= limit:
                break
        return out

    return web.json_response({"jobs": ctx.bridge.read(collect)})


async def submit_job(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    body = await _json_body(request)
    try:
        parse_job(body)
    except SpecError as e:
        raise ApiError(400, "invalid_spec", str(e)) from None
    key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
    if len(key) > 200:
        raise ApiError(400, "invalid", "Idempotency-Key must be at most 200 characters")
    job_id = uuid.uuid4().hex[:16]
    result = await _commit(ctx, SubmitJob(key, job_id, WORKFLOW_FRAMEWORK, body, now_ms()))
    return web.json_response({"id": result.value["job_id"], "duplicate": result.value["duplicate"]}, status=201)


def _job_or_404(ctx: NodeContext, job_id: str, render: Callable[[Any, Any], Any]) -> Any:
    def get(st: Any) -> Any:
        job = st.jobs.get(job_id)
        return None if job is None else render(st, job)

    out = ctx.bridge.read(get)
    if out is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return out


async def get_job(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    return web.json_response(_job_or_404(ctx, _path_id(request, "id"), views.job_json))


async def get_job_events(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    job_id = _path_id(request, "id")
    return web.json_response({"job_id": job_id, "events": _job_or_404(ctx, job_id, lambda _s, j: views.events_json(j))})


async def cancel_job(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    job_id = _path_id(request, "id")
    result = await _commit(ctx, CancelJob(job_id, "cancelled through the API", now_ms()))
    return web.json_response(result.value)


async def retry_job(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    job_id = _path_id(request, "id")
    await _json_body(request)
    key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
    result = await _commit(ctx, RetryJob(key, job_id, now_ms()))
    return web.json_response(result.value)


async def list_agents(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    agents = ctx.bridge.read(lambda st: [views.agent_json(a) for a in st.agents.values()])
    return web.json_response({"agents": agents})


async def drain_agent(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    agent_id = _path_id(request, "id")
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid", "expected a JSON object")
    deadline = body.get("deadline_s", 60)
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not 0 <= deadline <= 7 * 86400:
        raise ApiError(400, "invalid", "deadline_s must be a number of seconds between 0 and 604800")
    now = now_ms()
    result = await _commit(ctx, DrainAgent(agent_id, now + round(deadline * 1000), now))
    return web.json_response(result.value)


async def undrain_agent(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    result = await _commit(ctx, DrainAgent(_path_id(request, "id"), -1, now_ms()))
    return web.json_response(result.value)


async def list_offers(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    offers = [
        {
            "id": o.id,
            "framework_id": o.framework_id,
            "agent_id": o.agent_id,
            "resources": o.resources.to_json(),
            "expires_in_s": round(o.expires - time.monotonic(), 3),
        }
        for o in ctx.leader.offers()
    ]
    return web.json_response({"leader": ctx.leader.is_acting(), "offers": offers})


def make_app(ctx: NodeContext) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_middleware, auth_middleware(ctx.config.token)])
    app[CTX] = ctx
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_post("/v1/jobs", submit_job)
    app.router.add_get("/v1/jobs/{id}", get_job)
    app.router.add_delete("/v1/jobs/{id}", cancel_job)
    app.router.add_get("/v1/jobs/{id}/events", get_job_events)
    app.router.add_post("/v1/jobs/{id}/retry", retry_job)
    app.router.add_get("/v1/agents", list_agents)
    app.router.add_post("/v1/agents/{id}/drain", drain_agent)
    app.router.add_delete("/v1/agents/{id}/drain", undrain_agent)
    app.router.add_get("/v1/offers", list_offers)
    return app
