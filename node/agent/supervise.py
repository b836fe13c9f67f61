"""Per-attempt supervisor: a small stdlib-only process between the node and one task.

Usage::

    python -m node.agent.supervise [--lease-file PATH] [--timeout S] [--grace S]
        [--stdout FILE] [--stderr FILE] [--result FILE] [--parent-pid PID] -- argv...

The supervisor

* asks the kernel to send it SIGTERM when its parent (the node) dies (``PR_SET_PDEATHSIG``);
* starts the task in a new session (so the task leads its own process group), with
  ``PR_SET_PDEATHSIG = SIGKILL`` so the task also dies if the supervisor is killed outright;
* on SIGTERM/SIGINT/SIGHUP sends SIGTERM to the task's process group, SIGKILL after ``--grace``;
* enforces ``--timeout`` the same way;
* fences itself: every ~50 ms it reads the lease file, and if the file exists and
  ``time.monotonic()`` has passed the deadline written there it SIGKILLs the group at once;
* when the task's main process exits, SIGKILLs whatever is left of its process group, so background
  children of a finished task do not linger.

Outcome protocol. Before exiting, the supervisor atomically writes ``--result`` (JSON)::

    {"outcome": "exited" | "timeout" | "fenced" | "terminated" | "spawn_error",
     "exit_code": int | null,   # the task's exit status; a death by signal N is 128 + N
     "signal": int | null,      # N when the task died from a signal, else null
     "task_pid": int | null,
     "message": str}

The result file is authoritative. The supervisor's own exit status repeats the outcome for readers that
have no result file: the task's exit code for ``exited``, else :data:`EXIT_TIMEOUT`, :data:`EXIT_FENCED`,
``128 + signal`` for ``terminated`` and :data:`EXIT_SPAWN_ERROR`; :data:`EXIT_USAGE` for bad arguments.
These can collide with task exit codes, which is why the result file exists.

Handshake. Once the task has been exec'd the supervisor writes ``started <task pid>\\n`` to its stdout (or
``failed <message>\\n`` if it could not be started) and then points its stdout at /dev/null.

The lease file holds one float, a ``time.monotonic()`` value (CLOCK_MONOTONIC is system-wide, so the node
and the supervisor read the same clock). A missing lease file means no fencing.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_FENCED = 125
EXIT_SPAWN_ERROR = 127

OUTCOME_EXITED = "exited"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_FENCED = "fenced"
OUTCOME_TERMINATED = "terminated"
OUTCOME_SPAWN_ERROR = "spawn_error"

DEFAULT_GRACE_S = 3.0
POLL_INTERVAL_S = 0.05

_PR_SET_PDEATHSIG = 1


class UsageError(Exception):
    pass


@dataclass
class Options:
    argv: list[str] = field(default_factory=list)
    lease_file: str | None = None
    timeout_s: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    stdout: str | None = None
    stderr: str | None = None
    result: str | None = None
    parent_pid: int | None = None


def parse_args(args: list[str]) -> Options:
    opts = Options()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            opts.argv = args[i + 1 :]
            break
        name, eq, inline = arg.partition("=")
        if name not in (
            "--lease-file",
            "--timeout",
            "--grace",
            "--stdout",
            "--stderr",
            "--result",
            "--parent-pid",
        ):
            raise UsageError(f"unknown argument {arg!r}")
        if eq:
            value = inline
        else:
            i += 1
            if i >= len(args):
                raise UsageError(f"{name} needs a value")
            value = args[i]
        try:
            if name == "--lease-file":
                opts.lease_file = value
            elif name == "--timeout":
                t = float(value)
                opts.timeout_s = t if t > 0 else None
            elif name == "--grace":
                opts.grace_s = max(0.0, float(value))
            elif name == "--stdout":
                opts.stdout = value
            elif name == "--stderr":
                opts.stderr = value
            elif name == "--result":
                opts.result = value
            else:
                opts.parent_pid = int(value)
        except ValueError:
            raise UsageError(f"{name}: invalid value {value!r}") from None
        i += 1
    if not opts.argv:
        raise UsageError("no command given after --")
    return opts


def _load_prctl() -> Callable[[int, int], int] | None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.prctl
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int

    def prctl(option: int, arg: int) -> int:
        return int(fn(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), 0))

    return prctl


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _read_lease(path: str, previous: float | None) -> float | None:
    """The lease deadline, None when the file is missing; an unreadable value keeps the previous one."""
    try:
        with open(path, "rb") as f:
            data = f.read(64)
    except FileNotFoundError:
        return None
    except OSError:
        return previous
    try:
        return float(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return previous


def write_result(path: str, result: dict[str, Any]) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f)
        os.replace(tmp, path)
    except OSError as e:
        print(f"supervise: cannot write result file {path}: {e}", file=sys.stderr)


def _handshake(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.close(fd)
    except OSError:
        pass


class _Signals:
    """Termination signals and SIGCHLD, delivered through a self-pipe so that select() wakes at once."""

    def __init__(self) -> None:
        self.stop: int | None = None
        self.rfd, wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGCHLD, self._on_child)

    def _on_stop(self, signum: int, frame: object) -> None:
        if self.stop is None:
            self.stop = signum

    def _on_child(self, signum: int, frame: object) -> None:
        pass

    def wait(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self.rfd], [], [], max(0.0, timeout))
        except InterruptedError:
            return
        if ready:
            try:
                while os.read(self.rfd, 512):
                    pass
            except (BlockingIOError, InterruptedError):
                pass


def _exited(pid: int) -> bool:
    """True once the task's main process has exited; it stays a zombie (pid and pgid reserved)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid == pid


def run(opts: Options) -> int:
    prctl = _load_prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if opts.parent_pid is not None and os.getppid() != opts.parent_pid:
        # The node died before the death signal was armed: start nothing.
        if opts.result:
            write_result(
                opts.result,
                {
                    "outcome": OUTCOME_TERMINATED,
                    "exit_code": None,
                    "signal": None,
                    "task_pid": None,
                    "message": "node exited before the task started",
                },
            )
        return 128 + signal.SIGTERM

    signals = _Signals()
    me = os.getpid()

    def child_setup() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != me:
            os._exit(EXIT_SPAWN_ERROR)

    def spawn_error(message: str) -> int:
        if opts.stderr:
            try:
                with open(opts.stderr, "a", encoding="utf-8") as f:
                    f.write(f"conclave: {message}\n")
            except OSError:
                pass
        if opts.result:
            write_result(
                opts.result,
                {
                    "outcome": OUTCOME_SPAWN_ERROR,
                    "exit_code": None,
                    "signal": None,
                    "task_pid": None,
                    "message": message,
                },
            )
        _handshake(f"failed {message}")
        return EXIT_SPAWN_ERROR

    try:
        out = open(opts.stdout, "ab") if opts.stdout else subprocess.DEVNULL
        err = open(opts.stderr, "ab") if opts.stderr else subprocess.DEVNULL
    except OSError as e:
        return spawn_error(f"cannot open output file {e.filename}: {e.strerror}")
    try:
        proc = subprocess.Popen(
            opts.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=child_setup,
        )
    except OSError as e:
        reason = e.strerror or str(e)
        return spawn_error(f"cannot start {opts.argv[0]!r}: {reason}")
    except subprocess.SubprocessError as e:
        return spawn_error(f"cannot start {opts.argv[0]!r}: {e}")
    finally:
        for f in (out, err):
            if not isinstance(f, int):
                f.close()

    pid = proc.pid
    _handshake(f"started {pid}")

    started = time.monotonic()
    timeout_at = started + opts.timeout_s if opts.timeout_s is not None else None
    outcome: str | None = None
    message = ""
    stop_signal: int | None = None
    kill_at: float | None = None
    lease: float | None = None

    while not _exited(pid):
        now = time.monotonic()
        if opts.lease_file is not None:
            lease = _read_lease(opts.lease_file, lease)
            if lease is not None and now > lease:
                _killpg(pid, signal.SIGKILL)
                kill_at = None
                if outcome is None:
                    outcome, message = OUTCOME_FENCED, "fenced: lease expired"
        if outcome is None and signals.stop is not None:
            stop_signal = signals.stop
            outcome, message = OUTCOME_TERMINATED, f"supervisor received {_signame(stop_signal)}"
            _killpg(pid, signal.SIGTERM)
            kill_at = now + opts.grace_s
        if outcome is None and timeout_at is not None and now >= timeout_at:
            outcome, message = OUTCOME_TIMEOUT, f"timed out after {opts.timeout_s}s"
            _killpg(pid, signal.SIGTERM)
            kill_at = now + opts.grace_s
        if kill_at is not None and now >= kill_at:
            _killpg(pid, signal.SIGKILL)
            kill_at = None
        wait = POLL_INTERVAL_S
        for t in (timeout_at if outcome is None else None, kill_at):
            if t is not None:
                wait = min(wait, t - now)
        signals.wait(wait)

    # The main process is a zombie, so its pgid cannot have been reused: clear out the rest of the group.
    _killpg(pid, signal.SIGKILL)
    code = proc.wait()
    sig: int | None = None
    if code < 0:
        sig = -code
        code = 128 + sig
    if outcome is None:
        outcome = OUTCOME_EXITED
        message = f"killed by signal {_signame(sig)}" if sig is not None else f"exit code {code}"
    if opts.result:
        write_result(
            opts.result,
            {"outcome": outcome, "exit_code": code, "signal": sig, "task_pid": pid, "message": message},
        )
    if outcome == OUTCOME_EXITED:
        return code
    if outcome == OUTCOME_TIMEOUT:
        return EXIT_TIMEOUT
    if outcome == OUTCOME_FENCED:
        return EXIT_FENCED
    return 128 + (stop_signal or signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"supervise: {e}", file=sys.stderr)
        return EXIT_USAGE
    return run(opts)


if __name__ == "__main__":
    sys.exit(main())
