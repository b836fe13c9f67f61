"""The stallable proxy: byte streams survive a stall intact; pysyncobj peers work through it (no root)."""

from __future__ import annotations

import pickle
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated

from chaos import grudge, sysutil
from chaos.net import ProxyNetwork
from chaos.proxy import ProxyEngine, rewrite_announce


def frame(obj: object) -> bytes:
    data = zlib.compress(pickle.dumps(obj, 2), 3)
    return struct.pack("i", len(data)) + data


def test_rewrite_announce() -> None:
    buf = frame("127.0.0.1:20010") + b"rest"
    assert rewrite_announce(buf[:3], "127.0.0.1:20010", "x") == (b"", False)
    assert rewrite_announce(buf[:10], "127.0.0.1:20010", "x") == (b"", False)
    out, done = rewrite_announce(buf, "127.0.0.1:20010", "127.0.0.1:20099")
    assert done and out == frame("127.0.0.1:20099") + b"rest"
    other = frame("readonly")
    assert rewrite_announce(other, "127.0.0.1:20010", "y") == (other, True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def echo() -> Iterator[int]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=pump, args=(conn,), daemon=True).start()

    def pump(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield int(srv.getsockname()[1])
    stop.set()
    th.join(5)
    srv.close()


def recv_exact(s: socket.socket, n: int, timeout: float) -> bytes:
    s.settimeout(timeout)
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def test_stall_buffers_and_resumes_in_order(echo: int) -> None:
    eng = ProxyEngine()
    port = _free_port()
    eng.add_link("a", "b", ("127.0.0.1", port), ("127.0.0.1", echo))
    eng.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"hello")
            assert recv_exact(s, 5, 5) == b"hello"
            eng.set_cuts({("a", "b")})
            payload = bytes(range(256)) * 4000  # 1 MB, more than the socket buffers hold
            sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
            sender.start()
            s.settimeout(0.5)
            with pytest.raises(TimeoutError):
                s.recv(1)  # nothing comes back while a->b is stalled
            eng.set_cuts(set())
            assert recv_exact(s, len(payload), 20) == payload
            sender.join(10)
            eng.set_cuts({("b", "a")})  # replies stall, requests flow
            s.sendall(b"x")
            s.settimeout(0.5)
            with pytest.raises(TimeoutError):
                s.recv(1)
            eng.set_cuts(set())
            assert recv_exact(s, 1, 5) == b"x"
    finally:
        eng.stop()


def test_dialer_that_gives_up_during_a_cut_never_reaches_the_server(echo: int) -> None:
    eng = ProxyEngine()
    port = _free_port()
    eng.add_link("a", "b", ("127.0.0.1", port), ("127.0.0.1", echo))
    eng.start()
    try:
        eng.set_cuts({("a", "b")})
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"lost")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and eng.links[0].tasks:
            time.sleep(0.05)
        assert not eng.links[0].tasks
        eng.set_cuts(set())
    finally:
        eng.stop()


def test_pysyncobj_cluster_through_proxies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sysutil, "REGISTRY_DIR", tmp_path / "reg")

    class Counter(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, partners: list[str]) -> None:
            conf = SyncObjConf(connectionRetryTime=0.2, connectionTimeout=1.5, raftMinTimeout=0.4,
                                         raftMaxTimeout=1.2, leaderFallbackTimeout=2.0, appendEntriesUseBatch=False)
            super().__init__(me, partners, conf)
            self.value = 0

        @replicated  # type: ignore[untyped-decorator]
        def inc(self) -> int:
            self.value += 1
            return self.value

    nodes = ["n1", "n2", "n3"]
    reg = sysutil.Registry("cvcfff0")
    net = ProxyNetwork("cvcfff0", nodes, reg)
    net.setup()
    objs = {n: Counter(net.raft_address(n), [net.peer_raft_address(n, m) for m in nodes if m != n]) for n in nodes}
    try:
        assert sysutil.wait_until(lambda: all(o._getLeader() is not None for o in objs.values()), 20)
        leader = next(n for n, o in objs.items() if o._isLeader())
        objs[leader].inc(sync=True, timeout=5)
        assert sysutil.wait_until(lambda: all(o.value == 1 for o in objs.values()), 10)
        cuts, _ = grudge.isolate(nodes, leader)
        net.set_cuts(cuts)
        rest = [n for n in nodes if n != leader]
        assert sysutil.wait_until(lambda: any(objs[n]._isLeader() for n in rest), 20)
        new = next(n for n in rest if objs[n]._isLeader())
        objs[new].inc(sync=True, timeout=5)
        assert objs[leader].value == 1
        net.heal()
        assert sysutil.wait_until(lambda: all(o.value == 2 for o in objs.values()), 20)
    finally:
        for o in objs.values():
            o.destroy()
        net.teardown()
        reg.drop()
