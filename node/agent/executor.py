"""The agent's task executor: runs each attempt under its own supervisor process.

Every attempt gets a sandbox directory ``sandbox_root/<attempt id made filesystem-safe>/`` holding the
task's ``stdout`` and ``stderr``; it is also the task's working directory and ``CONCLAVE_SANDBOX``.
The node never forks tasks directly. It starts ``node/agent/supervise.py`` (stdlib only, run by path with
``python -I -S`` so that neither the sandbox cwd nor the task's ``PYTHON*`` variables affect it), and the
supervisor starts the task in its own process group. The supervisor

* dies with the node (``PR_SET_PDEATHSIG``) and takes the task's process group with it;
* enforces the timeout;
* fences itself: once ``time.monotonic()`` passes the deadline in the lease file (see
  :meth:`Executor.renew_lease`) it kills the task at once, even if the node process is frozen.

The supervisor reports the outcome in ``sandbox/.result`` (see :mod:`node.agent.supervise`), which the
executor maps to an :class:`ExitReport`. ``on_exit`` is called exactly once per launched attempt, from the
event loop, never from inside :meth:`Executor.launch`; the attempt is no longer in :meth:`Executor.running`
by then. Reports describe what happened: a task that had already exited on its own when a kill reached its
supervisor is reported by its exit code, not as KILLED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from node.agent import supervise

log = logging.getLogger(__name__)

FINISHED = "FINISHED"
FAILED = "FAILED"
KILLED = "KILLED"
LOST = "LOST"

# SIGTERM to the task's process group first, SIGKILL this long after.
KILL_GRACE_S = 3.0
# If a supervisor has not exited this long after kill(), SIGKILL it and the task's group from here.
HARD_KILL_AFTER_S = KILL_GRACE_S + 2.0
SHUTDOWN_TIMEOUT_S = 5.0
# How long launch() waits for the supervisor to report that the task was exec'd.
HANDSHAKE_TIMEOUT_S = 10.0

STDOUT_FILE = "stdout"
STDERR_FILE = "stderr"
RESULT_FILE = ".result"
SUPERVISOR_LOG = ".supervise.log"

SUPERVISOR_SCRIPT = Path(supervise.__file__).resolve()

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ExitReport:
    attempt_id: str
    state: str  # FINISHED, FAILED, KILLED or LOST
    exit_code: int | None
    message: str


def sandbox_name(attempt_id: str) -> str:
    """A directory name for ``attempt_id``: kept as is when already safe, else sanitised plus a digest."""
    name = _UNSAFE.sub("_", attempt_id).lstrip(".")
    if name != attempt_id or not name or len(name) > 100:
        digest = hashlib.sha256(attempt_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        name = f"{name[:80]}-{digest}" if name else digest
    return name


@dataclass(eq=False)
class _Attempt:
    attempt_id: str
    sandbox: Path
    timeout_s: float | None
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    launched: asyncio.Future[None]
    proc: asyncio.subprocess.Process | None = None
    task_pid: int | None = None
    kill_reason: str | None = None
    note: str | None = None
    hard_kill: asyncio.TimerHandle | None = None
    watcher: asyncio.Task[None] | None = None
    reported: bool = False


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _load_result(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("outcome"), str):
        return None
    return raw


class Executor:
    def __init__(
        self,
        sandbox_root: Path,
        on_exit: Callable[[ExitReport], None],
        *,
        lease_file: Path | None = None,
    ) -> None:
        self._root = Path(sandbox_root).absolute()
        self._on_exit = on_exit
        self._lease_file = Path(lease_file).absolute() if lease_file is not None else None
        self._attempts: dict[str, _Attempt] = {}
        self._closed = False

    def sandbox_for(self, attempt_id: str) -> Path:
        return self._root / sandbox_name(attempt_id)

    def running(self) -> set[str]:
        return set(self._attempts)

    async def launch(self, attempt_id: str, argv: list[str], env: dict[str, str], timeout_s: float | None) -> None:
        if attempt_id in self._attempts:
            return
        loop = asyncio.get_running_loop()
        att = _Attempt(
            attempt_id=attempt_id,
            sandbox=self.sandbox_for(attempt_id),
            timeout_s=float(timeout_s) if timeout_s is not None and timeout_s > 0 else None,
            loop=loop,
            done=loop.create_future(),
            launched=loop.create_future(),
        )
        self._attempts[attempt_id] = att
        try:
            await self._spawn(att, argv, env)
        except asyncio.CancelledError:
            if att.proc is None:
                self._finish_soon(att, KILLED, None, "killed: launch cancelled")
            else:
                self.kill(attempt_id, "launch cancelled")
            raise
        finally:
            if not att.launched.done():
                att.launched.set_result(None)

    async def _spawn(self, att: _Attempt, argv: list[str], env: dict[str, str]) -> None:
        if self._closed:
            self._finish_soon(att, KILLED, None, "killed: node shutting down")
            return
        if not argv:
            self._finish_soon(att, FAILED, None, "cannot start task: empty command")
            return
        try:
            log_file = self._prepare_sandbox(att.sandbox)
        except OSError as e:
            self._finish_soon(att, FAILED, None, f"cannot prepare sandbox {att.sandbox}: {e.strerror or e}")
            return
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["CONCLAVE_SANDBOX"] = str(att.sandbox)
        try:
            with log_file:
                proc = await asyncio.create_subprocess_exec(
                    *self._supervisor_command(att, argv),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log_file,
                    cwd=att.sandbox,
                    env=full_env,
                )
        except (OSError, ValueError) as e:
            self._finish_soon(att, FAILED, None, f"cannot start supervisor: {e}")
            return
        att.proc = proc
        att.watcher = att.loop.create_task(self._watch(att), name=f"executor-watch-{att.attempt_id}")
        if att.kill_reason is not None:
            self._signal_supervisor(att)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), HANDSHAKE_TIMEOUT_S)
        except TimeoutError:
            att.note = f"supervisor did not start the task within {HANDSHAKE_TIMEOUT_S}s"
            log.error("attempt %s: %s", att.attempt_id, att.note)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return
        word, _, rest = line.decode("utf-8", "replace").strip().partition(" ")
        if word == "started" and rest.isdigit():
            att.task_pid = int(rest)

    def _prepare_sandbox(self, sandbox: Path) -> BinaryIO:
        sandbox.mkdir(parents=True, exist_ok=True)
        for name in (STDOUT_FILE, STDERR_FILE):
            with open(sandbox / name, "ab"):
                pass
        (sandbox / RESULT_FILE).unlink(missing_ok=True)
        return open(sandbox / SUPERVISOR_LOG, "ab")

    def _supervisor_command(self, att: _Attempt, argv: list[str]) -> list[str]:
        cmd = [
            sys.executable or "python3",
            "-I",
            "-S",
            str(SUPERVISOR_SCRIPT),
            "--parent-pid",
            str(os.getpid()),
            "--grace",
            repr(KILL_GRACE_S),
            "--stdout",
            str(att.sandbox / STDOUT_FILE),
            "--stderr",
            str(att.sandbox / STDERR_FILE),
            "--result",
            str(att.sandbox / RESULT_FILE),
        ]
        if self._lease_file is not None:
            cmd += ["--lease-file", str(self._lease_file)]
        if att.timeout_s is not None:
            cmd += ["--timeout", repr(att.timeout_s)]
        return [*cmd, "--", *argv]

    async def _watch(self, att: _Attempt) -> None:
        assert att.proc is not None
        rc = await att.proc.wait()
        await att.launched
        state, code, message = self._outcome(att, rc)
        self._finish(att, ExitReport(att.attempt_id, state, code, message))

    def _outcome(self, att: _Attempt, rc: int) -> tuple[str, int | None, str]:
        result = _load_result(att.sandbox / RESULT_FILE)
        if result is not None:
            outcome = result["outcome"]
            code = _int_or_none(result.get("exit_code"))
            message = result.get("message")
            if not isinstance(message, str):
                message = ""
            if outcome == supervise.OUTCOME_SPAWN_ERROR:
                return FAILED, None, message or "cannot start task"
            if outcome == supervise.OUTCOME_FENCED:
                return LOST, code, "fenced: lease expired"
            if outcome == supervise.OUTCOME_TIMEOUT:
                return FAILED, code, f"timed out after {att.timeout_s}s"
            if outcome == supervise.OUTCOME_TERMINATED:
                return KILLED, code, f"killed: {att.kill_reason or message}"
            if outcome == supervise.OUTCOME_EXITED and code is not None:
                if code == 0:
                    return FINISHED, 0, "exit code 0"
                return FAILED, code, message or f"exit code {code}"
        if att.kill_reason is not None:
            return KILLED, None, f"killed: {att.kill_reason}"
        if att.note is not None:
            return FAILED, None, att.note
        if rc == supervise.EXIT_FENCED:
            return LOST, None, "fenced: lease expired"
        if rc == supervise.EXIT_TIMEOUT:
            return FAILED, None, f"timed out after {att.timeout_s}s"
        if rc == 0:
            return FINISHED, 0, "exit code 0"
        log_path = att.sandbox / SUPERVISOR_LOG
        if rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            return FAILED, None, f"supervisor died from {name} (see {log_path})"
        return FAILED, None, f"supervisor exited with code {rc} without a result (see {log_path})"

    def _finish_soon(self, att: _Attempt, state: str, code: int | None, message: str) -> None:
        att.loop.call_soon(self._finish, att, ExitReport(att.attempt_id, state, code, message))

    def _finish(self, att: _Attempt, report: ExitReport) -> None:
        if att.reported:
            return
        att.reported = True
        if att.hard_kill is not None:
            att.hard_kill.cancel()
            att.hard_kill = None
        if self._attempts.get(att.attempt_id) is att:
            del self._attempts[att.attempt_id]
        if not att.done.done():
            att.done.set_result(None)
        try:
            self._on_exit(report)
        except Exception:
            log.exception("on_exit callback failed for attempt %s", att.attempt_id)

    def kill(self, attempt_id: str, reason: str) -> None:
        att = self._attempts.get(attempt_id)
        if att is None or att.reported or att.kill_reason is not None:
            return
        att.kill_reason = reason
        self._signal_supervisor(att)
        att.hard_kill = att.loop.call_later(HARD_KILL_AFTER_S, self._hard_kill, att)

    def _signal_supervisor(self, att: _Attempt) -> None:
        proc = att.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    def _hard_kill(self, att: _Attempt) -> None:
        att.hard_kill = None
        proc = att.proc
        if proc is None or proc.returncode is not None:
            return
        log.warning("attempt %s: supervisor did not stop in time; killing it", att.attempt_id)
        if att.task_pid is not None:
            # The supervisor has not exited, so the task's pgid is still reserved by it or its members.
            with contextlib.suppress(OSError):
                os.killpg(att.task_pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def renew_lease(self, deadline_monotonic: float) -> None:
        path = self._lease_file
        if path is None:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        data = f"{float(deadline_monotonic)!r}\n"
        try:
            tmp.write_text(data, encoding="ascii")
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(data, encoding="ascii")
        os.replace(tmp, path)

    async def shutdown(self) -> None:
        self._closed = True
        attempts = list(self._attempts.values())
        if not attempts:
            return
        for att in attempts:
            self.kill(att.attempt_id, "node shutting down")
        pending = {att.done for att in attempts if not att.done.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=SHUTDOWN_TIMEOUT_S - 1.0)
        if pending:
            for att in attempts:
                if not att.reported:
                    self._hard_kill(att)
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for att in attempts:
            if not att.reported:
                if att.watcher is not None:
                    att.watcher.cancel()
                self._finish(att, ExitReport(att.attempt_id, KILLED, None, f"killed: {att.kill_reason}"))
