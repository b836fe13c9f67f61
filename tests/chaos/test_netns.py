"""The netns backend: directed cuts in one nft set, harness always reaches nodes, nothing left behind."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chaos import grudge, sysutil
from chaos.net import NetnsNetwork

SERVER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], 7100)); s.listen(16); print('ready', flush=True)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(b'hi'); c.close()\n"
)
CLIENT = (
    "import socket,sys\n"
    "try:\n"
    "    c=socket.create_connection((sys.argv[1], 7100), timeout=0.7); ok=c.recv(2)==b'hi'\n"
    "except OSError:\n"
    "    ok=False\n"
    "print('ok' if ok else 'cut')\n"
)


def can_reach(net: NetnsNetwork, src: str, dst: str) -> bool:
    out = subprocess.run(net.wrap(src, [sys.executable, "-c", CLIENT, net.ip[dst]]), capture_output=True,
                         text=True, timeout=10, check=False)
    return out.stdout.strip() == "ok"


@pytest.mark.usefixtures("need_netns")
def test_cuts_are_directed_and_swapped_atomically() -> None:
    prefix = f"cvc{secrets.token_hex(2)}"
    nodes = ["n1", "n2", "n3"]
    reg = sysutil.Registry(prefix)
    net = NetnsNetwork(prefix, nodes, reg)
    servers: list[subprocess.Popen[str]] = []
    try:
        net.setup()
        for n in nodes:
            p = subprocess.Popen(net.wrap(n, [sys.executable, "-c", SERVER, net.ip[n]]), stdout=subprocess.PIPE,
                                 text=True)
            servers.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        assert all(can_reach(net, a, b) for a in nodes for b in nodes if a != b)

        net.set_cuts(frozenset({("n1", "n2")}))  # n1 cannot send to n2: no TCP either way
        assert net.current_set() == {("n1", "n2")}
        assert not can_reach(net, "n1", "n2") and not can_reach(net, "n2", "n1")
        assert can_reach(net, "n1", "n3") and can_reach(net, "n3", "n2")

        cuts, _ = grudge.isolate(nodes, "n3")
        net.set_cuts(cuts)  # replaces the previous set in one transaction
        assert net.current_set() == set(cuts)
        assert can_reach(net, "n1", "n2") and not can_reach(net, "n1", "n3")

        # the harness (client namespace) reaches every node whatever the cuts
        got: list[bool] = []

        def from_client() -> None:
            import socket

            net.enter_client_side()
            for n in nodes:
                with socket.create_connection((net.ip[n], 7100), timeout=2) as c:
                    got.append(c.recv(2) == b"hi")

        th = threading.Thread(target=from_client)
        th.start()
        th.join(10)
        assert got == [True, True, True]
        net.heal()
        assert net.current_set() == set()
    finally:
        for p in servers:
            p.kill()
            p.wait(5)
        net.teardown()
        left = sysutil.run(["ip", "netns", "list"]).stdout
        assert prefix not in left
        reg.drop()


@pytest.mark.usefixtures("need_netns")
def test_cleanup_removes_an_abandoned_run() -> None:
    # The real registry directory on purpose: cleanup must see every live run's registry to spare it.
    prefix = f"cvc{secrets.token_hex(2)}"
    reg = sysutil.Registry(prefix)
    net = NetnsNetwork(prefix, ["n1", "n2", "n3"], reg)
    net.setup()
    mnt = Path("/tmp") / prefix / "n1"
    mnt.mkdir(parents=True)
    sysutil.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"{prefix}-n1", str(mnt)])
    reg.add("mounts", str(mnt))
    reg.add("dirs", str(Path("/tmp") / prefix))
    reg.data["owner_pid"] = 0  # as if the owner had died
    reg._save()
    done = sysutil.cleanup_prefix(prefix, reg.data)
    reg.drop()
    assert any(prefix in d for d in done)
    assert prefix not in sysutil.run(["ip", "netns", "list"]).stdout
    assert str(mnt) not in Path("/proc/mounts").read_text()
    assert not (Path("/tmp") / prefix).exists()
