#!/usr/bin/env python3
"""Deploy Conclave with the Ansible role into real systemd-nspawn hosts and check it.

Each host is a Debian bookworm root (built once with debootstrap and cached), booted with
``systemd-nspawn --boot`` in a network namespace of its own, wired by a veth to a bridge in
another namespace this run creates; the controller (this machine) reaches them through one
more veth and runs ``ansible-playbook`` over real SSH.

Checks, in order: ansible-lint (production profile), syntax check, converge, idempotence
(changed=0), check mode with diff (changed=0), verify play, a submitted job completes, a
config change rolls through one node at a time, ``rolling_restart.yml`` keeps a leader, and
the verify play fails once two of three nodes are stopped.

Everything this run creates carries its run id (``ccd<hex>``) and is removed on exit, also
after a failure, Ctrl-C or SIGTERM. Exit status: 0 passed, 1 failed, 77 this machine cannot
run the test (the reason is printed on a line starting with ``SKIP:``).

Usage: ``sudo python3 tests/deploy/nspawn_cluster.py [--hosts 3] [--keep-on-failure]``
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import glob
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
DEFAULT_CACHE = Path(os.environ.get("CONCLAVE_DEPLOY_CACHE", "/var/cache/conclave-deploy-test"))
SKIP_EXIT = 77

SUITE = "bookworm"
ROOTFS_PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "sudo",
    "python3",
    "python3-venv",
    "python3-apt",
    "python3-packaging",
]
# Bump when the way the cached root is prepared changes.
ROOTFS_RECIPE = "3"
DEPLOY_USER = "deploy"
CONTROLLER_REQUIREMENTS = [
    "ansible-core==2.19.14",
    "ansible-lint==26.10.1",
    "setuptools>=68",
    "wheel",
]
APT_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
JOB = {"name": "deploy-check", "tasks": [{"name": "t", "command": ["/bin/true"]}]}

T0 = time.monotonic()


class Skip(Exception):
    """This machine cannot run the test."""


class CheckFailed(Exception):
    """A check failed; the message says which and why."""


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def run(
    cmd: list[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = 120,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        check=False,
        text=True,
        capture_output=capture,
        timeout=timeout,
        env=env,
        cwd=cwd,
        input=input_text,
        stdin=subprocess.DEVNULL if input_text is None else None,
    )
    if check and proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or "")).strip()
        raise CheckFailed(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    return proc


def digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- machine setup


def apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env, timeout=600)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env, timeout=900)


def ensure_tools() -> None:
    missing = sorted({pkg for tool, pkg in APT_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Skip(f"missing {', '.join(missing)} and no apt-get to install them")
    say(f"  apt-get install {' '.join(missing)}")
    try:
        apt_install(missing)
    except (CheckFailed, subprocess.TimeoutExpired) as e:
        raise Skip(f"cannot install {', '.join(missing)} with apt-get: {str(e).splitlines()[0]}") from None
    still = [tool for tool in APT_TOOLS if shutil.which(tool) is None]
    if still:
        raise Skip(f"{', '.join(still)} still missing after apt-get install")


def cgroup_roots() -> list[Path]:
    """The hierarchies a container's cgroup must be created in (see shared FACTS.md)."""
    base = Path("/sys/fs/cgroup")
    if (base / "unified").is_dir() and (base / "systemd").is_dir():
        return [base / "systemd", base / "unified"]  # hybrid
    if (base / "cgroup.controllers").exists():
        return [base]  # unified only
    if (base / "systemd").is_dir():
        return [base / "systemd"]  # legacy
    raise Skip("no usable cgroup hierarchy under /sys/fs/cgroup")


def preflight(prefix: str) -> list[Path]:
    if sys.platform != "linux":
        raise Skip("systemd-nspawn needs Linux")
    if os.geteuid() != 0:
        raise Skip("must run as root (systemd-nspawn, network namespaces, mounts, cgroups)")
    roots = cgroup_roots()
    for root in roots:
        probe = root / f"{prefix}-probe"
        try:
            probe.mkdir()
            (probe / "cgroup.procs").read_text()
            probe.rmdir()
        except OSError as e:
            raise Skip(f"cgroup {root} is not writable: {e.strerror}") from None
    ensure_tools()
    probe_ns = f"{prefix}-probe"
    proc = run(["ip", "netns", "add", probe_ns], check=False)
    if proc.returncode != 0:
        raise Skip(f"cannot create a network namespace: {proc.stderr.strip()}")
    run(["ip", "netns", "del", probe_ns], check=False)
    return roots


def controller_venv(cache: Path) -> Path:
    key = digest(CONTROLLER_REQUIREMENTS, sys.version_info[:2])
    venv = cache / f"venv-{key}"
    stamp = venv / ".complete"
    with locked(cache / ".venv.lock"):
        if stamp.exists():
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        say(f"  creating {venv} ({', '.join(CONTROLLER_REQUIREMENTS)})")
        run([sys.executable, "-m", "venv", str(venv)], timeout=300)
        run(
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *CONTROLLER_REQUIREMENTS],
            timeout=900,
        )
        stamp.write_text(json.dumps(CONTROLLER_REQUIREMENTS))
    return venv


# --------------------------------------------------------------------------- the cached root


def apt_sources() -> list[tuple[str, list[str]]]:
    """(uri, suites) of the enabled 'deb' sources of this machine, in file order."""
    found: list[tuple[str, list[str]]] = []
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]
    for name in files:
        path = Path(name)
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                if not line.startswith("deb "):
                    continue
                words = re.sub(r"\[[^\]]*\]", " ", line).split()
                if len(words) >= 3:
                    found.append((words[1], [words[2]]))
        elif path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() in ("no", "false"):
                    continue
                for uri in fields.get("uris", "").split():
                    found.append((uri, fields.get("suites", "").split()))
    return found


def debian_mirror() -> str:
    sources = [(u, s) for u, s in apt_sources() if u.startswith(("http://", "https://", "file:/"))]
    for uri, suites in sources:
        if SUITE in suites:
            return uri
    for uri, _ in sources:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    raise Skip(f"no Debian mirror for {SUITE} in /etc/apt/sources.list(.d): cannot debootstrap")


def cached_rootfs(cache: Path) -> Path:
    key = digest(SUITE, ROOTFS_PACKAGES, ROOTFS_RECIPE, DEPLOY_USER)
    final = cache / "rootfs" / f"{SUITE}-{key}"
    with locked(cache / "rootfs" / ".lock"):
        if (final / ".conclave-deploy-complete").exists():
            return final
        mirror = debian_mirror()
        build = cache / "rootfs" / f".build-{key}-{os.getpid()}"
        for stale in (cache / "rootfs").glob(f".build-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        say(f"  debootstrap {SUITE} from {mirror} into {build} (once per machine)")
        try:
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(ROOTFS_PACKAGES)}",
                    SUITE,
                    str(build),
                    mirror,
                ],
                timeout=1200,
            )
            chroot = ["chroot", str(build)]
            run([*chroot, "useradd", "--create-home", "--shell", "/bin/bash", DEPLOY_USER])
            sudoers = build / "etc" / "sudoers.d" / DEPLOY_USER
            sudoers.write_text(f"{DEPLOY_USER} ALL=(ALL) NOPASSWD:ALL\n")
            sudoers.chmod(0o440)
            run([*chroot, "apt-get", "clean"])
            for rel in ("etc/hostname", "etc/machine-id", "var/lib/dbus/machine-id"):
                with contextlib.suppress(FileNotFoundError):
                    (build / rel).unlink()
            (build / ".conclave-deploy-complete").write_text(json.dumps({"packages": ROOTFS_PACKAGES}))
            if final.exists():
                shutil.rmtree(final)
            build.rename(final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    return final


def user_ids(rootfs: Path, user: str) -> tuple[int, int, str]:
    for line in (rootfs / "etc" / "passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3]), parts[5]
    raise CheckFailed(f"user {user} missing from the cached root {rootfs}")


# --------------------------------------------------------------------------- wheelhouse


def build_wheelhouse(cache: Path, venv: Path, work: Path, name: str = "wheelhouse", bump: str = "") -> Path:
    """The project's wheel, built fresh from a copy of the tree, plus cached dependency wheels.

    ``bump`` is appended to the project's version (e.g. ".post1") to stand for an upgrade.
    """
    src = work / f"src-{name}"
    src.mkdir()
    pyproject = (REPO / "pyproject.toml").read_text()
    if bump:
        pyproject, n = re.subn(r'(?m)^(version\s*=\s*")([^"]+)(")', rf"\g<1>\g<2>{bump}\g<3>", pyproject, count=1)
        if n != 1:
            raise CheckFailed("cannot find the version in pyproject.toml")
    (src / "pyproject.toml").write_text(pyproject)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pkg in ("consensus", "node"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=ignore)
    for extra in ("README.md", "LICENSE"):
        if (REPO / extra).exists():
            shutil.copy2(REPO / extra, src)
    if not (src / "README.md").exists():
        (src / "README.md").write_text("Conclave\n")
    house = work / name
    house.mkdir()
    pip = str(venv / "bin" / "pip")
    run(
        [
            pip,
            "wheel",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(house),
            str(src),
        ],
        timeout=300,
    )
    wheels = list(house.glob("conclave-*.whl"))
    if len(wheels) != 1:
        raise CheckFailed(f"expected one conclave wheel, got {wheels}")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("dependencies", [])
    dep_dir = cache / "wheels" / f"deps-{digest(deps, sys.version_info[:2])}"
    with locked(cache / "wheels" / ".lock"):
        if not (dep_dir / ".complete").exists():
            shutil.rmtree(dep_dir, ignore_errors=True)
            dep_dir.mkdir(parents=True)
            say(f"  downloading dependency wheels into {dep_dir}")
            run([pip, "wheel", "-q", "--disable-pip-version-check", "-w", str(dep_dir), *deps], timeout=900)
            (dep_dir / ".complete").write_text(json.dumps(deps))
    for whl in dep_dir.glob("*.whl"):
        shutil.copy2(whl, house)
    return house


# --------------------------------------------------------------------------- network + hosts


@dataclass
class Host:
    name: str
    address: str
    netns: str
    cgroup: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None


@dataclass
class Cluster:
    run_id: str
    prefix: str
    work: Path
    subnet: ipaddress.IPv4Network
    controller_ip: str
    hosts: list[Host] = field(default_factory=list)
    token: str = ""
    key: Path = Path()
    inventory: Path = Path()


def pick_subnet() -> ipaddress.IPv4Network:
    used: list[ipaddress.IPv4Network] = []
    for cmd in (["ip", "-j", "-4", "route", "show", "table", "all"], ["ip", "-j", "-4", "addr"]):
        out = run(cmd, check=False).stdout or "[]"
        for entry in json.loads(out):
            dst = entry.get("dst")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
            for a in entry.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    used.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for _ in range(256):
        net = ipaddress.IPv4Network(f"10.213.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise CheckFailed("no free 10.213.x.0/24 subnet")


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cache: Path = args.cache_dir
        self.cleanups: list[tuple[str, Callable[[], None]]] = []
        self.phases: list[tuple[str, float, str]] = []
        self.failed = False
        self.venv = Path()
        self.env: dict[str, str] = {}
        self.log_dir = Path()
        while True:
            run_id = secrets.token_hex(2)
            prefix = f"ccd{run_id}"
            if not Path(f"/run/netns/{prefix}-br").exists():
                break
        self.run_id = run_id
        self.prefix = prefix
        self.cluster: Cluster | None = None
        self._running: set[subprocess.Popen[str]] = set()

    # ---- bookkeeping

    def on_cleanup(self, what: str, fn: Callable[[], None]) -> None:
        self.cleanups.append((what, fn))

    def cleanup(self) -> None:
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
        try:
            while self.cleanups:
                what, fn = self.cleanups.pop()
                try:
                    fn()
                except Exception as e:  # keep going: everything else must still be removed
                    say(f"  cleanup of {what} failed: {e}")
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        say(f"== {name}")
        try:
            yield
        except Skip:
            self.phases.append((name, time.monotonic() - start, "skip"))
            raise
        except BaseException as e:
            took = time.monotonic() - start
            self.phases.append((name, took, "FAILED"))
            say(f"!! {name} FAILED after {took:.1f}s: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            raise
        took = time.monotonic() - start
        self.phases.append((name, took, "ok"))
        say(f"   {name}: ok ({took:.1f}s)")

    # ---- environment

    def setup_controller(self) -> None:
        self.venv = controller_venv(self.cache)
        self.log_dir = self.cache / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{self.prefix}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logs = sorted((self.cache / "logs").iterdir())
        for old in logs[: max(0, len(logs) - 10)]:
            shutil.rmtree(old, ignore_errors=True)

    def make_workdir(self) -> Path:
        work = Path(tempfile.mkdtemp(prefix=f"conclave-deploy-{self.prefix}-", dir="/var/tmp"))

        def remove() -> None:
            if self.failed and self.args.keep_on_failure:
                say(f"  keeping {work}")
                return
            shutil.rmtree(work, ignore_errors=True)

        self.on_cleanup(f"work dir {work}", remove)
        return work

    def ansible_env(self, work: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(
            PATH=f"{self.venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
            ANSIBLE_HOME=str(work / "ansible-home"),
            ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=str(work / "cp"),
            ANSIBLE_SSH_ARGS=(
                "-o ControlMaster=auto -o ControlPersist=120s -o StrictHostKeyChecking=no "
                "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5"
            ),
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_RETRY_FILES_ENABLED="False",
            PYTHONUNBUFFERED="1",
        )
        env.pop("ANSIBLE_STDOUT_CALLBACK", None)
        return env

    # ---- network and containers

    def build_network(self, work: Path, hosts: int) -> Cluster:
        subnet = pick_subnet()
        base = int(subnet.network_address)
        ctl_ip = str(ipaddress.IPv4Address(base + 1))
        c = Cluster(self.run_id, self.prefix, work, subnet, ctl_ip)
        br_ns = f"{self.prefix}-br"
        run(["ip", "netns", "add", br_ns])
        self.on_cleanup(f"netns {br_ns}", lambda: self._del_netns(br_ns))
        run(["ip", "-n", br_ns, "link", "set", "lo", "up"])
        run(["ip", "-n", br_ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", br_ns, "link", "set", "br0", "up"])
        ctl_if = f"{self.prefix}c"
        run(["ip", "link", "add", ctl_if, "type", "veth", "peer", "name", f"{self.prefix}cb"])
        self.on_cleanup(f"link {ctl_if}", lambda: self._del_link(ctl_if))
        run(["ip", "link", "set", f"{self.prefix}cb", "netns", br_ns])
        run(["ip", "-n", br_ns, "link", "set", f"{self.prefix}cb", "master", "br0", "up"])
        run(["ip", "addr", "add", f"{ctl_ip}/{subnet.prefixlen}", "dev", ctl_if])
        run(["ip", "link", "set", ctl_if, "up"])
        for i in range(1, hosts + 1):
            name = f"n{i}"
            ns = f"{self.prefix}-{name}"
            addr = str(ipaddress.IPv4Address(base + 10 + i))
            run(["ip", "netns", "add", ns])
            self.on_cleanup(f"netns {ns}", functools.partial(self._del_netns, ns))
            outer, inner = f"{self.prefix}{name}", f"{self.prefix}{name}i"
            run(["ip", "link", "add", inner, "type", "veth", "peer", "name", outer])
            run(["ip", "link", "set", inner, "netns", ns])
            run(["ip", "link", "set", outer, "netns", br_ns])
            run(["ip", "-n", br_ns, "link", "set", outer, "master", "br0", "up"])
            run(["ip", "-n", ns, "link", "set", inner, "name", "host0"])
            run(["ip", "-n", ns, "addr", "add", f"{addr}/{subnet.prefixlen}", "dev", "host0"])
            run(["ip", "-n", ns, "link", "set", "host0", "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            c.hosts.append(Host(name, addr, ns, f"{self.prefix}-{name}", work / name))
        say(f"  subnet {subnet}, controller {ctl_ip}, hosts {', '.join(h.address for h in c.hosts)}")
        return c

    @staticmethod
    def _del_netns(name: str) -> None:
        run(["ip", "netns", "del", name], check=False)

    @staticmethod
    def _del_link(name: str) -> None:
        if Path(f"/sys/class/net/{name}").exists():
            run(["ip", "link", "del", name], check=False)

    def prepare_host(self, c: Cluster, h: Host, rootfs: Path, pubkey: str) -> None:
        for sub in ("upper", "work", "root"):
            (h.dir / sub).mkdir(parents=True)
        root = h.dir / "root"
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={rootfs},upperdir={h.dir / 'upper'},workdir={h.dir / 'work'}",
                str(root),
            ]
        )
        self.on_cleanup(f"mount {root}", lambda: self._umount(root))
        (root / "etc" / "hostname").write_text(f"{h.name}\n")
        (root / "etc" / "machine-id").write_text(secrets.token_hex(16) + "\n")
        hosts_lines = ["127.0.0.1 localhost", f"127.0.1.1 {h.name}"]
        hosts_lines += [f"{o.address} {o.name}" for o in c.hosts if o is not h]
        (root / "etc" / "hosts").write_text("\n".join(hosts_lines) + "\n")
        uid, gid, home = user_ids(rootfs, DEPLOY_USER)
        ssh_dir = root / home.lstrip("/") / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(pubkey)
        (ssh_dir / "authorized_keys").chmod(0o600)
        for p in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, uid, gid)

    @staticmethod
    def _umount(path: Path) -> None:
        if os.path.ismount(path):
            if run(["umount", str(path)], check=False).returncode != 0:
                run(["umount", "-l", str(path)], check=False)

    def boot(self, roots: list[Path], h: Host) -> None:
        dirs = [root / h.cgroup for root in roots]
        for d in dirs:
            d.mkdir()
        self.on_cleanup(f"container {h.name}", lambda: self._stop_container(h, dirs))
        moves = "; ".join(f"echo $$ > {d}/cgroup.procs" for d in dirs)
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--directory",
            str(h.dir / "root"),
            "--machine",
            h.cgroup,
            f"--network-namespace-path=/run/netns/{h.netns}",
            "--console=pipe",
        ]
        h.log = open(h.dir / "console.log", "wb")
        h.proc = subprocess.Popen(
            ["/bin/sh", "-c", f'{moves}; exec "$@"', "sh", *nspawn],
            stdin=subprocess.DEVNULL,
            stdout=h.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _stop_container(self, h: Host, dirs: list[Path]) -> None:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.terminate()  # nspawn asks the container's systemd to power off
            try:
                h.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                say(f"  {h.name}: no clean shutdown in 15s, killing its cgroup")
        for d in dirs:
            kill = d / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1")
        for _ in range(50):
            pids: set[int] = set()
            for d in dirs:
                for procs in d.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(p) for p in procs.read_text().split())
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if h.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.proc.wait(timeout=5)
        if h.log is not None:
            h.log.close()
        for d in dirs:
            if d.exists():
                for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                with contextlib.suppress(OSError):
                    d.rmdir()

    def ssh(self, h: Host, command: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.cluster is not None
        return run(
            [
                "ssh",
                "-i",
                str(self.cluster.key),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=3",
                f"{DEPLOY_USER}@{h.address}",
                command,
            ],
            timeout=timeout,
            check=check,
        )

    def wait_booted(self, h: Host, deadline: float) -> None:
        last = ""
        while time.monotonic() < deadline:
            if h.proc is not None and h.proc.poll() is not None:
                tail = (h.dir / "console.log").read_text(errors="replace")[-2000:]
                raise CheckFailed(f"{h.name}: systemd-nspawn exited with {h.proc.returncode}\n{tail}")
            try:
                p = self.ssh(h, "systemctl is-system-running --wait", timeout=30, check=False)
            except subprocess.TimeoutExpired:
                continue
            state = p.stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = self.ssh(h, "systemctl --failed --no-legend --plain", check=False).stdout.strip()
                    say(f"  {h.name}: degraded ({failed})")
                return
            last = (p.stdout + p.stderr).strip()
            time.sleep(0.3)
        raise CheckFailed(f"{h.name} did not boot to 'running' in time (last: {last})")

    def close_control_masters(self, work: Path) -> None:
        for sock in (work / "cp").glob("*"):
            run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "controller-cleanup"], check=False, timeout=10)

    # ---- ansible

    def write_inventory(self, c: Cluster, house: Path) -> None:
        token = secrets.token_urlsafe(24)
        c.token = token
        inv: dict[str, Any] = {
            "all": {
                "children": {
                    "conclave": {
                        "hosts": {
                            h.name: {"ansible_host": h.address, "conclave_bind_address": h.address} for h in c.hosts
                        },
                        "vars": {
                            "ansible_user": DEPLOY_USER,
                            "ansible_ssh_private_key_file": str(c.key),
                            "ansible_python_interpreter": "/usr/bin/python3",
                            "conclave_wheelhouse": str(house),
                            "conclave_cluster_token": token,
                            "conclave_cluster_secret": secrets.token_urlsafe(24),
                            "conclave_agent_cpus": 1.0,
                            "conclave_agent_mem_mb": 512,
                            "conclave_agent_disk_mb": 1024,
                            "conclave_health_retries": 90,
                        },
                    }
                }
            }
        }
        c.inventory = c.work / "inventory.yml"
        c.inventory.write_text(json.dumps(inv, indent=2))  # JSON is YAML

    def ansible(
        self, label: str, tool: str, *args: str, expect_ok: bool = True, timeout: float = 600
    ) -> tuple[int, str]:
        log = self.log_dir / f"{len(self.phases) + 1:02d}-{label}.log"
        cmd = [str(self.venv / "bin" / tool), *args]
        with open(log, "w", buffering=1) as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=ANSIBLE_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            self._running.add(proc)
            out_lines = []
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                assert proc.stdout is not None
                start = time.monotonic()
                for line in proc.stdout:
                    fh.write(f"{time.monotonic() - start:7.2f} {line}")
                    out_lines.append(line)
                rc = proc.wait()
            finally:
                timer.cancel()
                self._running.discard(proc)
        out = "".join(out_lines)
        if expect_ok and rc != 0:
            raise CheckFailed(f"{tool} {label} exited {rc} (log {log}):\n{tail(out, 80)}")
        return rc, out

    def playbook(
        self, label: str, playbook: str, *extra: str, expect_ok: bool = True
    ) -> tuple[int, str, dict[str, dict[str, int]]]:
        assert self.cluster is not None
        rc, out = self.ansible(
            label, "ansible-playbook", "-i", str(self.cluster.inventory), playbook, *extra, expect_ok=expect_ok
        )
        recap = parse_recap(out)
        if recap:
            keys = ("ok", "changed", "failed", "unreachable")
            counts = (f"{h}: {' '.join(f'{k}={r.get(k, 0)}' for k in keys)}" for h, r in recap.items())
            say("   " + "; ".join(counts))
        return rc, out, recap

    # ---- cluster API

    def api(self, h: Host, method: str, path: str, body: Any = None, timeout: float = 3.0) -> tuple[int, Any]:
        assert self.cluster is not None
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{h.address}:8100{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.cluster.token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            with contextlib.suppress(Exception):
                return e.code, json.loads(e.read() or b"null")
            return e.code, None

    def sample(self) -> dict[str, Any]:
        assert self.cluster is not None
        views: dict[str, Any] = {}
        for h in self.cluster.hosts:
            try:
                code, body = self.api(h, "GET", "/v1/status", timeout=0.5)
                views[h.name] = body if code == 200 else None
            except (OSError, ValueError):
                views[h.name] = None
        return views

    def main_pids(self) -> dict[str, str]:
        assert self.cluster is not None
        return {
            h.name: self.ssh(h, "systemctl show -p MainPID --value conclave").stdout.strip() for h in self.cluster.hosts
        }

    # ---- the run

    def execute(self) -> None:
        with self.phase("preflight"):
            roots = preflight(self.prefix)
        with self.phase("controller venv (ansible-core, ansible-lint)"):
            self.setup_controller()
            work = self.make_workdir()
            self.env = self.ansible_env(work)
            say(f"  logs: {self.log_dir}")
        with self.phase("cached Debian root"):
            rootfs = cached_rootfs(self.cache)
            say(f"  {rootfs}")
        with self.phase("wheelhouse"):
            house = build_wheelhouse(self.cache, self.venv, work)
            say(f"  {len(list(house.glob('*.whl')))} wheels")
        lint = Background(
            lambda: self.ansible("ansible-lint", "ansible-lint", "--offline", "--profile", "production", "--nocolor")
        )
        with self.phase(f"network and {self.args.hosts} containers (ansible-lint runs meanwhile)"):
            c = self.build_network(work, self.args.hosts)
            self.cluster = c
            c.key = work / "id_ed25519"
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.prefix, "-f", str(c.key)])
            self.on_cleanup("ssh control masters", lambda: self.close_control_masters(work))
            pub = (work / "id_ed25519.pub").read_text()
            for h in c.hosts:
                self.prepare_host(c, h, rootfs, pub)
            for h in c.hosts:
                self.boot(roots, h)
            deadline = time.monotonic() + 90
            for h in c.hosts:
                self.wait_booted(h, deadline)
            self.write_inventory(c, house)
        with self.phase("ansible-lint --offline (production profile)"):
            lint.result()
            say(f"   (it ran {lint.took:.1f}s, beside the container boot)")
        with self.phase("ansible-playbook --syntax-check"):
            for pb in ("site.yml", "verify.yml", "rolling_restart.yml"):
                self.ansible(f"syntax-{pb}", "ansible-playbook", "-i", str(c.inventory), "--syntax-check", pb)
        with self.phase("converge (site.yml, new cluster)"):
            _, out, recap = self.playbook("converge", "site.yml")
            if "New cluster" not in out:
                raise CheckFailed("site.yml did not take the new-cluster (all at once) path")
            if sum(r["changed"] for r in recap.values()) == 0:
                raise CheckFailed("converge changed nothing")
        with self.phase("idempotence (second site.yml run: changed=0)"):
            _, out, recap = self.playbook("idempotence", "site.yml")
            assert_unchanged(recap, out, "second run")
        with self.phase("check mode (site.yml --check --diff: changed=0)"):
            _, out, recap = self.playbook("check-diff", "site.yml", "--check", "--diff")
            assert_unchanged(recap, out, "--check --diff")
        with self.phase("verify.yml (leader elected)"):
            _, out, _ = self.playbook("verify", "verify.yml")
            say("   " + health_line(out))
        with self.phase("a submitted job completes"):
            self.submit_job()
        with self.phase("upgrade + config change: site.yml restarts one node at a time"):
            upgrade = build_wheelhouse(self.cache, self.venv, work, "wheelhouse-upgrade", bump=".post1")
            new_wheel = next(upgrade.glob("conclave-*.whl")).name
            new_version = new_wheel.split("-")[1]
            say(f"   upgrading to {new_wheel}")
            before = self.main_pids()
            with Sampler(self) as sampler:
                _, out, _ = self.playbook(
                    "upgrade",
                    "site.yml",
                    "-e",
                    json.dumps(
                        {
                            "conclave_wheelhouse": str(upgrade),
                            "conclave_agent_attributes": {"deploy_check": "upgraded"},
                        }
                    ),
                )
            after = self.main_pids()
            if "one at a time" not in out:
                raise CheckFailed("site.yml did not take the rolling (serial 1) path on a running cluster")
            restarted = [n for n in before if before[n] != after[n]]
            if len(restarted) != len(before):
                raise CheckFailed(f"expected every node restarted, got {restarted} (MainPID {before} -> {after})")
            for h in c.hosts:
                cmdline = self.ssh(h, f"tr '\\0' ' ' < /proc/{after[h.name]}/cmdline").stdout
                if f"/venvs/{new_version}/" not in cmdline:
                    raise CheckFailed(f"{h.name} does not run {new_version} after the upgrade: {cmdline}")
                config = self.ssh(h, "sudo cat /etc/conclave/conclave.toml").stdout
                if "upgraded" not in config:
                    raise CheckFailed(f"{h.name}: the config change is missing:\n{config}")
            say(f"   every node runs {new_version}; restarted in order {restart_order(out)}; {sampler.report()}")
            sampler.assert_leader_kept()
        with self.phase("rolling_restart.yml keeps a leader"):
            before = self.main_pids()
            with Sampler(self) as sampler:
                self.playbook("rolling-restart", "rolling_restart.yml")
            after = self.main_pids()
            restarted = [n for n in before if before[n] != after[n]]
            if len(restarted) != len(before):
                raise CheckFailed(f"expected every node restarted, got {restarted} (MainPID {before} -> {after})")
            say(f"   {sampler.report()}")
            sampler.assert_leader_kept()
        with self.phase("verify.yml fails with two of three nodes stopped"):
            for h in c.hosts[1:]:
                self.ssh(h, "sudo systemctl stop conclave")
            rc, out, _ = self.playbook(
                "verify-degraded",
                "verify.yml",
                "-e",
                "conclave_health_retries=4",
                "-e",
                "conclave_health_delay=1",
                expect_ok=False,
            )
            if rc == 0:
                raise CheckFailed("verify.yml passed with two of three nodes stopped")
            if "NOT healthy" not in out:
                raise CheckFailed(f"verify.yml failed without the health message:\n{tail(out, 40)}")
            say("   verify.yml failed as expected: " + failure_line(out))

    def submit_job(self) -> None:
        assert self.cluster is not None
        h = self.cluster.hosts[0]
        deadline = time.monotonic() + 30
        job_id = None
        last: Any = None
        while time.monotonic() < deadline:
            try:
                code, body = self.api(h, "POST", "/v1/jobs", JOB, timeout=10)
            except OSError as e:
                code, body = -1, str(e)
            last = (code, body)
            if code == 201 and isinstance(body, dict) and body.get("id"):
                job_id = body["id"]
                break
            time.sleep(0.5)
        if job_id is None:
            raise CheckFailed(f"POST /v1/jobs on {h.name} never returned 201: {last}")
        say(f"   job {job_id} submitted to {h.name}")
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                code, body = self.api(h, "GET", f"/v1/jobs/{job_id}")
                if code == 200 and isinstance(body, dict):
                    state = body.get("state")
                    if state == "complete":
                        say(f"   job {job_id} complete")
                        return
                    if state in ("failed", "cancelled"):
                        raise CheckFailed(f"job {job_id} ended {state}: {json.dumps(body)[:1500]}")
            time.sleep(0.3)
        raise CheckFailed(f"job {job_id} not complete within 60s (last state {state})")


class Background:
    """Runs a function in a thread; result() re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None
        self.took = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        try:
            self._value = self._fn()
        except BaseException as e:
            self._error = e
        self.took = time.monotonic() - start

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class Sampler:
    """Samples every node's /v1/status from the controller every 0.25 s while a play runs."""

    # The longest time without a majority-agreed leader that still counts as keeping one:
    # restarting the leader itself costs one election (raft timeouts 0.4-1.2 s, plus the
    # time for the stopped leader's connections to fail).
    MAX_GAP_S = 6.0

    def __init__(self, harness: Harness) -> None:
        self.h = harness
        self.samples: list[tuple[float, str | None, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        assert self.h.cluster is not None
        n = len(self.h.cluster.hosts)
        while not self._stop.is_set():
            t = time.monotonic()
            views = self.h.sample()
            votes: dict[str, int] = {}
            for v in views.values():
                if isinstance(v, dict) and v.get("leader_id"):
                    votes[v["leader_id"]] = votes.get(v["leader_id"], 0) + 1
            leader = None
            for lid, count in votes.items():
                own = (
                    views.get(lid)
                    if lid in views
                    else next((v for v in views.values() if isinstance(v, dict) and v.get("node_id") == lid), None)
                )
                if count > n // 2 and (own is None or own.get("role") == "leader"):
                    leader = lid
            self.samples.append((t, leader, views))
            self._stop.wait(max(0.0, 0.25 - (time.monotonic() - t)))

    def gaps(self) -> list[float]:
        gaps, start = [], None
        for t, leader, _ in self.samples:
            if leader is None and start is None:
                start = t
            elif leader is not None and start is not None:
                gaps.append(t - start)
                start = None
        if start is not None:
            gaps.append(self.samples[-1][0] - start)
        return gaps

    def report(self) -> str:
        with_leader = sum(1 for _, leader, _ in self.samples if leader)
        gaps = self.gaps()
        leaders: list[str] = []
        for _, leader, _ in self.samples:
            if leader and (not leaders or leaders[-1] != leader):
                leaders.append(leader)
        return (
            f"{len(self.samples)} samples, {with_leader} with a majority-agreed leader; "
            f"leaderless windows {len(gaps)}, longest {max(gaps, default=0.0):.2f}s; "
            f"leaders seen {' -> '.join(leaders)}"
        )

    def assert_leader_kept(self) -> None:
        if len(self.samples) < 5:
            raise CheckFailed(f"too few status samples ({len(self.samples)})")
        longest = max(self.gaps(), default=0.0)
        if longest > self.MAX_GAP_S:
            raise CheckFailed(
                f"the cluster had no leader for {longest:.1f}s (limit {self.MAX_GAP_S}s): {self.report()}"
            )
        if self.samples[-1][1] is None:
            raise CheckFailed(f"no leader at the end of the play: {self.report()}")


# --------------------------------------------------------------------------- output parsing


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def parse_recap(out: str) -> dict[str, dict[str, int]]:
    recap: dict[str, dict[str, int]] = {}
    if "PLAY RECAP" not in out:
        return recap
    for line in out.split("PLAY RECAP", 1)[1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if m:
            recap[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return recap


def changed_tasks(out: str) -> list[str]:
    found, task = [], ""
    for line in out.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed: "):
            found.append(f"{task} ({line.split(']')[0].split('[')[-1]})")
    return found


def assert_unchanged(recap: dict[str, dict[str, int]], out: str, what: str) -> None:
    if not recap:
        raise CheckFailed(f"{what}: no PLAY RECAP in the output:\n{tail(out, 40)}")
    changed = sum(r.get("changed", 0) for r in recap.values())
    if changed:
        raise CheckFailed(f"{what} reported changed={changed}: {'; '.join(changed_tasks(out))}")


def health_line(out: str) -> str:
    m = re.search(r'"msg": "(Cluster healthy[^"]*)"', out)
    return m.group(1) if m else "(no health summary found)"


def failure_line(out: str) -> str:
    m = re.search(r'"msg": "(Conclave cluster is NOT healthy[^"]*)"', out)
    return m.group(1) if m else tail(out, 5)


def restart_order(out: str) -> list[str]:
    order = []
    task = ""
    for line in out.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line
        elif line.startswith("changed: [") and "Restart Conclave" in task:
            order.append(line.split("[", 1)[1].split("]", 1)[0])
    return order


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3, choices=(3, 5))
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--keep-on-failure", action="store_true", help="keep the work dir (not the containers)")
    args = parser.parse_args(argv)

    harness = Harness(args)

    def on_signal(signum: int, _frame: object) -> None:
        for proc in list(harness._running):
            with contextlib.suppress(Exception):
                proc.terminate()
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    say(f"conclave deploy check, run {harness.prefix}, {args.hosts} hosts, cache {args.cache_dir}")
    status = 0
    try:
        harness.execute()
    except Skip as e:
        print(f"SKIP: {e}", flush=True)
        status = SKIP_EXIT
    except CheckFailed as e:
        harness.failed = True
        print(f"FAILED: {e}", flush=True)
        status = 1
    except KeyboardInterrupt:
        harness.failed = True
        print("INTERRUPTED", flush=True)
        status = 130
    except Exception as e:
        harness.failed = True
        print(f"ERROR: {type(e).__name__}: {e}", flush=True)
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        with harness.phase("cleanup"):
            harness.cleanup()
        leftovers = [p for p in Path("/run/netns").glob(f"{harness.prefix}-*")] if Path("/run/netns").exists() else []
        if leftovers:
            print(f"WARNING: left behind {leftovers}", flush=True)
    say("phase timings:")
    for name, took, result in harness.phases:
        print(f"    {took:7.1f}s  {result:6}  {name}", flush=True)
    say(
        f"{'PASSED' if status == 0 else 'SKIPPED' if status == SKIP_EXIT else 'FAILED'} in {time.monotonic() - T0:.1f}s"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
