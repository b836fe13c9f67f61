"""The harness's HTTP client for the admin API (aiohttp), with outcome classification for the history."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from chaos.history import FAIL, INFO, OK

# 4xx answers that mean the request was refused and changed nothing.
DEFINITE_4XX = frozenset({400, 401, 403, 404, 405, 413, 422})


@dataclass
class Reply:
    kind: str  # ok | fail | info
    status: int | None
    body: Any
    error: str = ""


def classify(status: int, body: Any) -> str:
    """ok / fail / info for an HTTP answer to a write.

    A 503 ``no_leader`` is raised before anything is proposed, so it is a definite failure; every other 5xx
    (``not_committed`` says so itself) may still apply and is unknown.
    """
    if 200 <= status < 300:
        return OK
    if status in DEFINITE_4XX:
        return FAIL
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    if status == 503 and code == "no_leader":
        return FAIL
    return INFO


class Api:
    def __init__(self, urls: dict[str, str], token: str, timeout_s: float = 6.0) -> None:
        self.urls = urls
        self.token = token
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, force_close=True),
            headers={"Authorization": f"Bearer {self.token}"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    async def request(
        self, node: str, method: str, path: str, body: Any = None, key: str | None = None,
        timeout_s: float | None = None,
    ) -> Reply:
        headers = {"Idempotency-Key": key} if key else {}
        to = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        sent = False
        try:
            data = json.dumps(body).encode() if body is not None else None
            if data is not None:
                headers["Content-Type"] = "application/json"
            async with self.session.request(
                method, self.urls[node] + path, data=data, headers=headers, timeout=to
            ) as resp:
                sent = True
                raw = await resp.read()
                try:
                    parsed: Any = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    parsed = raw.decode(errors="replace")[:200]
                return Reply(classify(resp.status, parsed), resp.status, parsed)
        except aiohttp.ClientConnectorError as e:
            return Reply(FAIL, None, None, f"connect: {e.os_error or e}")
        except TimeoutError:
            return Reply(INFO, None, None, "timeout" + ("" if sent else " (maybe before the answer)"))
        except aiohttp.ClientError as e:
            return Reply(INFO, None, None, f"{type(e).__name__}: {e}")
        except OSError as e:
            return Reply(INFO, None, None, f"os: {e}")

    async def get(self, node: str, path: str, timeout_s: float = 2.0) -> Any | None:
        r = await self.request(node, "GET", path, timeout_s=timeout_s)
        return r.body if r.kind == OK else None

    async def status(self, node: str, timeout_s: float = 1.5) -> dict[str, Any] | None:
        body = await self.get(node, "/v1/status", timeout_s)
        return body if isinstance(body, dict) else None

    async def statuses(self, timeout_s: float = 1.5) -> dict[str, dict[str, Any] | None]:
        nodes = list(self.urls)
        got = await asyncio.gather(*(self.status(n, timeout_s) for n in nodes))
        return dict(zip(nodes, got, strict=True))
