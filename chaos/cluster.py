"""A cluster of real Conclave node processes: configs, start/stop, SIGKILL, SIGSTOP, clock skew, full disk.

Every method here is synchronous and quick (a few signals, file writes, or one ``mount``); the async runner
calls them through ``asyncio.to_thread``. Process control targets exact PIDs this object started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos import sysutil
from chaos.net import Network

REPO = Path(__file__).resolve().parent.parent
UNSAFE_ENV = "CONCLAVE_UNSAFE_NO_FENCING"


@dataclass
class ClusterOptions:
    nodes: int = 3
    cpus: float = 2.0
    mem_mb: int = 1024
    disk_mb: int = 10240
    unsafe_no_fencing: bool = False
    faketime: bool = False
    tmpfs_mb: int = 0  # >0: every node's data dir on its own tmpfs of this size (needs root)
    timing: dict[str, float] = field(default_factory=dict)
    python: str = sys.executable


@dataclass
class Node:
    id: str
    dir: Path
    data_dir: Path
    config: Path
    log: Path
    faketime_file: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    paused: bool = False
    pause_scope: str = "node"
    skew_s: float = 0.0
    expected_down: bool = False
    mounted: bool = False
    ballast: Path | None = None
    exits: list[dict[str, object]] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Cluster:
    def __init__(
        self,
        net: Network,
        work_dir: Path,
        log_dir: Path,
        options: ClusterOptions,
        registry: sysutil.Registry,
        on_event: Callable[..., None] | None = None,
    ) -> None:
        self.net = net
        self.work_dir = work_dir
        self.log_dir = log_dir
        self.opts = options
        self.registry = registry
        self.on_event = on_event or (lambda *a, **k: None)
        self.token = secrets.token_urlsafe(24)
        # pysyncobj's handshake is encrypted with a secret; the proxy must read it, so no secret there.
        self.secret = secrets.token_urlsafe(24) if net.kind == "netns" else None
        self.faketime_lib = sysutil.find_faketime() if options.faketime else None
        if options.faketime and self.faketime_lib is None:
            raise RuntimeError("libfaketimeMT.so.1 not found (apt-get install faketime)")
        self.nodes: dict[str, Node] = {}
        self.kills: dict[int, float] = {}  # pid -> when the harness SIGKILLed it
        self.markers: list[str] = [str(work_dir)]  # paths whose processes belong to this run
        for nid in net.nodes:
            d = work_dir / nid
            self.nodes[nid] = Node(
                id=nid,
                dir=d,
                data_dir=d / "data",
                config=d / "conclave.toml",
                log=log_dir / f"{nid}.log",
                faketime_file=d / "faketime",
            )

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    # ------------------------------------------------------------------ setup

    def config_text(self, nid: str) -> str:
        node = self.nodes[nid]
        net = self.net
        lines = [
            "[node]",
            f"id = {_toml_str(nid)}",
            f"data_dir = {_toml_str(str(node.data_dir))}",
            f"raft_address = {_toml_str(net.raft_address(nid))}",
            f"api_address = {_toml_str(net.api_address(nid))}",
            "",
            "[cluster]",
            f"token = {_toml_str(self.token)}",
        ]
        if self.secret:
            lines.append(f"secret = {_toml_str(self.secret)}")
        for peer in self.ids:
            lines += [
                "",
                "[[cluster.peers]]",
                f"id = {_toml_str(peer)}",
                f"raft_address = {_toml_str(net.peer_raft_address(nid, peer))}",
                f"api_url = {_toml_str(net.peer_api_url(nid, peer))}",
            ]
        o = self.opts
        lines += [
            "",
            "[agent]",
            "enabled = true",
            f"cpus = {o.cpus}",
            f"mem_mb = {o.mem_mb}",
            f"disk_mb = {o.disk_mb}",
        ]
        if o.timing:
            lines += ["", "[timing]"] + [f"{k} = {v}" for k, v in sorted(o.timing.items())]
        return "\n".join(lines) + "\n"

    def setup(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.registry.add("dirs", str(self.work_dir))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for nid, node in self.nodes.items():
            node.dir.mkdir(parents=True, exist_ok=True)
            node.data_dir.mkdir(parents=True, exist_ok=True)
            if self.opts.tmpfs_mb > 0:
                self.registry.add("mounts", str(node.data_dir))
                sysutil.run(["mount", "-t", "tmpfs", "-o", f"size={self.opts.tmpfs_mb}m,mode=0755",
                             f"{self.net.prefix}-{nid}", str(node.data_dir)])
                node.mounted = True
            node.faketime_file.write_text("+0\n")
            node.config.write_text(self.config_text(nid))
            os.chmod(node.config, 0o600)

    def env(self, nid: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != UNSAFE_ENV and not k.startswith("FAKETIME")}
        env.pop("LD_PRELOAD", None)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        if self.opts.unsafe_no_fencing:
            env[UNSAFE_ENV] = "1"
        if self.faketime_lib:
            env["LD_PRELOAD"] = self.faketime_lib
            env["FAKETIME_TIMESTAMP_FILE"] = str(self.nodes[nid].faketime_file)
            env["FAKETIME_CACHE_DURATION"] = "1"
        return env

    # ------------------------------------------------------------------ processes

    def start(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.running():
            return
        argv = self.net.wrap(nid, [self.opts.python, "-m", "node", "node", "--config", str(node.config)])
        with node.log.open("ab") as logf:
            logf.write(f"\n=== chaos: start #{node.starts + 1} at {time.time():.3f}\n".encode())
            logf.flush()
            node.proc = subprocess.Popen(
                argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(REPO),
                env=self.env(nid),
                start_new_session=True,
            )
        node.starts += 1
        node.paused = False
        node.expected_down = False
        self.registry.add("pids", node.proc.pid)
        self.on_event("node-start", node=nid, pid=node.proc.pid)

    def start_all(self) -> None:
        for nid in self.ids:
            self.start(nid)

    def kill(self, nid: str) -> list[int]:
        """SIGKILL the node process (its task supervisors then stop their tasks: PR_SET_PDEATHSIG)."""
        node = self.nodes[nid]
        if node.proc is None or not node.running():
            return []
        tree = [node.proc.pid, *sysutil.descendants(node.proc.pid)]
        now = time.time()
        node.expected_down = True
        os.kill(node.proc.pid, signal.SIGKILL)
        for p in tree:
            self.kills.setdefault(p, now)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(10)
        node.paused = False
        self._note_exit(node)
        return tree

    def pause(self, nid: str, scope: str = "node") -> None:
        """SIGSTOP the node process (``scope="node"``: its task supervisors keep running and fence on their
        own), or the node with every descendant (``"tree"``: the whole host freezes, like a paused VM)."""
        node = self.nodes[nid]
        if node.proc is not None and node.running():
            if scope == "tree":
                sysutil.signal_tree(node.proc.pid, signal.SIGSTOP)
            else:
                os.kill(node.proc.pid, signal.SIGSTOP)
            node.paused = True
            node.pause_scope = scope

    def resume(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.proc is not None and node.running():
            if node.pause_scope == "tree":
                sysutil.signal_tree(node.proc.pid, signal.SIGCONT)
            else:
                os.kill(node.proc.pid, signal.SIGCONT)
        node.paused = False

    def set_skew(self, nid: str, offset_s: float) -> None:
        """Set the node's clock offset to ``offset_s`` (libfaketime re-reads the file within a second)."""
        self.nodes[nid].skew_s = offset_s
        f = self.nodes[nid].faketime_file
        tmp = f.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+.3f}\n")
        tmp.replace(f)

    def fill_disk(self, nid: str) -> int:
        """Write a ballast file into the node's tmpfs data dir until ENOSPC; returns bytes written."""
        node = self.nodes[nid]
        if not node.mounted:
            raise RuntimeError("fill_disk needs the data dir on a tmpfs (netns backend, root)")
        path = node.data_dir / "chaos-ballast"
        node.ballast = path
        written = 0
        chunk = b"\0" * (1 << 20)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    n = os.write(fd, chunk)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        break
                    raise
                written += n
                if n < len(chunk):
                    chunk = chunk[:4096]
        finally:
            os.close(fd)
        return written

    def free_disk(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.ballast is not None:
            with contextlib.suppress(FileNotFoundError):
                node.ballast.unlink()
            node.ballast = None

    def _note_exit(self, node: Node) -> None:
        if node.proc is not None and node.proc.returncode is not None:
            node.exits.append({"t": time.time(), "code": node.proc.returncode, "expected": node.expected_down})

    def check_exits(self) -> list[tuple[str, int]]:
        """Nodes that died without the harness killing them: (id, returncode), reported once each."""
        out: list[tuple[str, int]] = []
        for nid, node in self.nodes.items():
            if node.proc is not None and node.proc.poll() is not None and not node.expected_down:
                node.expected_down = True
                self._note_exit(node)
                out.append((nid, int(node.proc.returncode or 0)))
        return out

    def heal_processes(self) -> list[str]:
        """SIGCONT every paused node, free ballast, restart every dead node.

        Clock offsets stay: taking one back would move the node's monotonic clock backwards."""
        restarted: list[str] = []
        for nid, node in self.nodes.items():
            if node.paused:
                self.resume(nid)
            self.free_disk(nid)
        for nid, node in self.nodes.items():
            if not node.running():
                self.start(nid)
                restarted.append(nid)
        return restarted

    def stop_all(self, timeout: float = 15.0) -> None:
        for node in self.nodes.values():
            if node.running() and node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.proc.pid, signal.SIGCONT)
                    node.expected_down = True
                    node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(5)
            self.registry.remove("pids", node.proc.pid)
        self.reap_strays()

    def reap_strays(self) -> None:
        """Kill any process still running from this run's work dir (task supervisors, tasks)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            strays = [
                int(p) for p in os.listdir("/proc")
                if p.isdigit() and int(p) != os.getpid() and any(m in sysutil.cmdline(int(p)) for m in self.markers)
            ]
            if not strays:
                return
            sysutil.signal_pids(strays, signal.SIGCONT)
            sysutil.signal_pids(strays, signal.SIGKILL)
            sysutil.wait_until(lambda s=strays: not any(sysutil.pid_alive(p) for p in s), 3.0)  # type: ignore[misc]

    def teardown(self) -> None:
        self.stop_all()
        for node in self.nodes.values():
            if node.mounted:
                sysutil.run(["umount", "-l", str(node.data_dir)], check=False)
                self.registry.remove("mounts", str(node.data_dir))
                node.mounted = False
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.registry.remove("dirs", str(self.work_dir))
