"""Processes, commands, tool installation and the leftovers registry used by ``python -m chaos cleanup``."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from chaos import PREFIX

REGISTRY_DIR = Path(os.environ.get("CHAOS_REGISTRY_DIR", "/tmp/conclave-chaos-registry"))
RUN_PREFIX_RE = re.compile(rf"^{PREFIX}[0-9a-f]{{4}}")
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
CLONE_NEWNET = 0x40000000


class CommandError(RuntimeError):
    pass


def run(
    argv: Sequence[str], input_text: str | None = None, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and p.returncode != 0:
        raise CommandError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def is_root() -> bool:
    return os.geteuid() == 0


def find_faketime() -> str | None:
    for p in FAKETIME_LIBS:
        if os.path.exists(p):
            return p
    return None


def missing_tools(need_faketime: bool) -> list[str]:
    """Debian packages still needed for the netns backend (nft, ip, nsenter, libfaketime)."""
    pkgs: list[str] = []
    if shutil.which("nft") is None:
        pkgs.append("nftables")
    if shutil.which("ip") is None:
        pkgs.append("iproute2")
    if shutil.which("nsenter") is None:
        pkgs.append("util-linux")
    if need_faketime and find_faketime() is None:
        pkgs.append("faketime")
    return pkgs


def ensure_tools(need_faketime: bool, log: Callable[[str], None] = print) -> None:
    """apt-get install what is missing; ``apt-get update`` only if the first install fails."""
    pkgs = missing_tools(need_faketime)
    if not pkgs:
        return
    if not is_root() or shutil.which("apt-get") is None:
        raise CommandError(f"missing {', '.join(pkgs)} and cannot apt-get install them (need root + apt)")
    log(f"installing {' '.join(pkgs)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *pkgs]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    if p.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600, check=False)
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
        if p.returncode != 0:
            raise CommandError(f"apt-get install {' '.join(pkgs)} failed: {p.stderr.strip()[-400:]}")
    still = missing_tools(need_faketime)
    if still:
        raise CommandError(f"still missing after install: {', '.join(still)}")


def setns_current_thread(netns_path: str) -> None:
    """Move the calling thread (and threads it creates later) into a network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns_path}): {os.strerror(err)}")
    finally:
        os.close(fd)


# ---------------------------------------------------------------- processes


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) >= 2:
            out[int(d)] = int(rest[1])
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first, then theirs), from one /proc snapshot."""
    parents = _ppid_map()
    children: dict[int, list[int]] = {}
    for p, pp in parents.items():
        children.setdefault(pp, []).append(p)
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def signal_pids(pids: Iterable[int], sig: int) -> list[int]:
    """Send ``sig`` to each pid that still exists; returns those it reached."""
    hit: list[int] = []
    for p in pids:
        try:
            os.kill(p, sig)
            hit.append(p)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass
    return hit


def signal_tree(pid: int, sig: int, rounds: int = 3) -> list[int]:
    """Signal a process and all its descendants, re-reading /proc so late children are not missed.

    SIGSTOP is applied parent first, so a stopped parent cannot spawn more children; SIGCONT the same way,
    in one tight loop, so a resumed tree starts together (like a resumed VM).
    """
    done: list[int] = []
    seen: set[int] = set()
    for _ in range(rounds):
        batch = [p for p in [pid, *descendants(pid)] if p not in seen]
        if not batch:
            break
        seen.update(batch)
        done.extend(signal_pids(batch, sig))
    return done


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- registry of what a run created


class Registry:
    """A JSON file listing what one run created, so an interrupted run can be cleaned up later."""

    def __init__(self, prefix: str) -> None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        self.path = REGISTRY_DIR / f"{prefix}.json"
        self.data: dict[str, Any] = {
            "prefix": prefix,
            "owner_pid": os.getpid(),
            "created": time.time(),
            "netns": [],
            "links": [],
            "mounts": [],
            "pids": [],
            "dirs": [],
        }
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)

    def add(self, kind: str, value: Any) -> None:
        if value not in self.data[kind]:
            self.data[kind].append(value)
            self._save()

    def remove(self, kind: str, value: Any) -> None:
        if value in self.data[kind]:
            self.data[kind].remove(value)
            self._save()

    def drop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _mounts() -> list[str]:
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if len(ln.split()) > 1]


def _kill_and_wait(pids: Iterable[int]) -> None:
    live = [p for p in pids if pid_alive(p)]
    signal_pids(live, signal.SIGCONT)
    signal_pids(live, signal.SIGKILL)
    wait_until(lambda: not any(pid_alive(p) for p in live), 5.0)


def netns_pids(name: str) -> list[int]:
    p = run(["ip", "netns", "pids", name], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def destroy_netns(name: str) -> None:
    _kill_and_wait(netns_pids(name))
    run(["ip", "netns", "delete", name], check=False)


def cleanup_prefix(prefix: str, extra: dict[str, Any] | None = None) -> list[str]:
    """Remove every process, mount, namespace, link and directory that belongs to run ``prefix``."""
    done: list[str] = []
    data = extra or {}
    pids = [int(p) for p in data.get("pids", [])]
    marker = f"/{prefix}"
    own = [p for p in pids if pid_alive(p) and marker in cmdline(p)]
    for p in own:
        _kill_and_wait([p, *descendants(p)])
        done.append(f"pid {p}")
    if is_root() and shutil.which("ip"):
        names = set(data.get("netns", []))
        listed = run(["ip", "netns", "list"], check=False).stdout.split("\n")
        names.update(ln.split()[0] for ln in listed if ln.strip() and ln.split()[0].startswith(prefix))
        for ns in sorted(names, key=lambda n: n.endswith("-br")):
            destroy_netns(ns)
            done.append(f"netns {ns}")
    for m in sorted(set(data.get("mounts", [])) | {m for m in _mounts() if marker in m}, reverse=True):
        if m in _mounts():
            run(["umount", "-l", m], check=False)
            done.append(f"mount {m}")
    if is_root() and shutil.which("ip"):
        links = run(["ip", "-o", "link"], check=False).stdout.splitlines()
        for ln in links:
            parts = ln.split(":")
            if len(parts) > 1:
                name = parts[1].strip().split("@")[0]
                if name.startswith(prefix):
                    run(["ip", "link", "delete", name], check=False)
                    done.append(f"link {name}")
    for d in data.get("dirs", []):
        if Path(d).exists() and marker in d:
            shutil.rmtree(d, ignore_errors=True)
            done.append(f"dir {d}")
    return done


def cleanup_leftovers(force: bool = False) -> list[str]:
    """Clean every run with this project's prefix whose owner process is gone (or all with ``force``)."""
    done: list[str] = []
    prefixes: dict[str, dict[str, Any]] = {}
    live_owner: set[str] = set()
    if REGISTRY_DIR.exists():
        for f in REGISTRY_DIR.glob(f"{PREFIX}*.json"):
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            prefix = str(data.get("prefix", f.stem))
            owner = int(data.get("owner_pid", 0))
            if not force and owner and owner != os.getpid() and pid_alive(owner):
                live_owner.add(prefix)
                continue
            prefixes[prefix] = data
    if is_root() and shutil.which("ip"):
        for ln in run(["ip", "netns", "list"], check=False).stdout.splitlines():
            if ln.strip():
                m = RUN_PREFIX_RE.match(ln.split()[0])
                if m and m.group(0) not in live_owner:
                    prefixes.setdefault(m.group(0), {})
    for mnt in _mounts():
        m = re.search(rf"/({PREFIX}[0-9a-f]{{4}})", mnt)
        if m and m.group(1) not in live_owner:
            prefixes.setdefault(m.group(1), {})
    for prefix, data in sorted(prefixes.items()):
        done.extend(cleanup_prefix(prefix, data))
        with contextlib.suppress(FileNotFoundError):
            (REGISTRY_DIR / f"{prefix}.json").unlink()
    if live_owner:
        done.append(f"skipped runs still owned by a live process: {', '.join(sorted(live_owner))}")
    return done
