"""A small blocking HTTP client for the admin API, used by the CLI and the tests.

It knows every node of a cluster and tries them in turn: any node answers reads and accepts writes.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ClientError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Cluster:
    urls: list[str]
    token: str | None

    @staticmethod
    def from_file(path: str | Path) -> Cluster:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
            urls = [n["url"] for n in data["nodes"]]
            token = data.get("token")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ClientError(0, "cluster_file", f"cannot read cluster file {p}: {e}") from None
        return Cluster(urls, token)


def request(
    url: str,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"error": {"code": "http_error", "message": raw.decode(errors="replace")[:200]}}
        return e.code, payload


class Client:
    def __init__(self, cluster: Cluster, timeout: float = 10.0) -> None:
        self.cluster = cluster
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        """Try each node until one gives a definite answer; 503s and connection errors move on."""
        last: ClientError | None = None
        for url in self.cluster.urls:
            try:
                status, payload = request(url, method, path, self.cluster.token, body, headers, self.timeout)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                last = ClientError(0, "unreachable", f"{url}: {getattr(e, 'reason', e)}")
                continue
            if status < 400:
                return payload
            err = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
            last = ClientError(status, err.get("code", ""), err.get("message", f"HTTP {status}"))
            if status != 503:
                raise last
        assert last is not None
        raise last

    def status(self, url: str) -> Any:
        return request(url, "GET", "/v1/status", timeout=self.timeout)[1]

    def submit(self, spec: Any, key: str | None = None) -> str:
        key = key or uuid.uuid4().hex
        out = self.call("POST", "/v1/jobs", spec, {"Idempotency-Key": key})
        return str(out["id"])

    def job(self, job_id: str) -> Any:
        return self.call("GET", f"/v1/jobs/{job_id}")
