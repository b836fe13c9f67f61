"""Tests for the agent's task executor and its per-attempt supervisor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from node.agent import executor as executor_module
from node.agent.executor import Executor, ExitReport, sandbox_name
from node.agent.supervise import UsageError, parse_args

REPO = Path(__file__).resolve().parents[2]

# Prints the shell's pid, then the pid of a grandchild, and waits on the grandchild.
TREE = ["sh", "-c", "echo $$; sleep 100 & echo $!; wait"]


def run(coro: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def poll(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


async def apoll(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def read_pids(path: Path, count: int) -> list[int]:
    lines: list[str] = []

    def ready() -> bool:
        nonlocal lines
        try:
            lines = path.read_text().split()
        except FileNotFoundError:
            return False
        return len(lines) >= count

    poll(ready, 10.0, f"{count} pid(s) in {path}")
    return [int(x) for x in lines[:count]]


async def aread_pids(path: Path, count: int) -> list[int]:
    lines: list[str] = []

    def ready() -> bool:
        nonlocal lines
        try:
            lines = path.read_text().split()
        except FileNotFoundError:
            return False
        return len(lines) >= count

    await apoll(ready, 10.0, f"{count} pid(s) in {path}")
    return [int(x) for x in lines[:count]]


def reap(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Reports:
    def __init__(self) -> None:
        self.items: list[ExitReport] = []
        self.at: dict[str, float] = {}
        self.events: list[str] = []

    def __call__(self, report: ExitReport) -> None:
        self.items.append(report)
        self.at[report.attempt_id] = time.monotonic()
        self.events.append(f"report {report.attempt_id}")

    def get(self, attempt_id: str) -> ExitReport | None:
        for r in self.items:
            if r.attempt_id == attempt_id:
                return r
        return None

    async def wait(self, attempt_id: str, timeout: float = 10.0) -> ExitReport:
        await apoll(lambda: self.get(attempt_id) is not None, timeout, f"report for {attempt_id}")
        report = self.get(attempt_id)
        assert report is not None
        return report


@contextlib.asynccontextmanager
async def executor(tmp_path: Path, lease_file: Path | None = None) -> AsyncIterator[tuple[Executor, Reports]]:
    reports = Reports()
    ex = Executor(tmp_path / "sandboxes", reports, lease_file=lease_file)
    try:
        yield ex, reports
    finally:
        await ex.shutdown()


def test_success_is_finished_with_output_env_and_cwd(tmp_path: Path) -> None:
    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch(
                "a1",
                ["sh", "-c", 'echo "hello $FOO"; echo oops >&2; pwd; echo "$CONCLAVE_SANDBOX"'],
                {"FOO": "bar"},
                None,
            )
            r = await reports.wait("a1")
            assert r == ExitReport("a1", "FINISHED", 0, "exit code 0")
            assert ex.running() == set()
            sandbox = tmp_path / "sandboxes" / "a1"
            out = (sandbox / "stdout").read_text().splitlines()
            assert out[0] == "hello bar"
            assert Path(out[1]).resolve() == sandbox.resolve()
            assert out[2] == str(sandbox)
            assert (sandbox / "stderr").read_text() == "oops\n"

    run(body())


def test_nonzero_exit_is_failed(tmp_path: Path) -> None:
    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", ["sh", "-c", "exit 3"], {}, 10.0)
            assert await reports.wait("a1") == ExitReport("a1", "FAILED", 3, "exit code 3")

    run(body())


def test_death_by_signal_maps_to_128_plus_signal(tmp_path: Path) -> None:
    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", ["sh", "-c", "kill -USR1 $$"], {}, None)
            r = await reports.wait("a1")
            assert (r.state, r.exit_code) == ("FAILED", 128 + signal.SIGUSR1)
            assert "SIGUSR1" in r.message

    run(body())


def test_command_not_found_is_reported_after_launch_returns(tmp_path: Path) -> None:
    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", ["conclave-no-such-command-xyz"], {}, None)
            reports.events.append("launch returned")
            r = await reports.wait("a1")
            assert r.state == "FAILED"
            assert r.exit_code is None
            assert "conclave-no-such-command-xyz" in r.message
            assert "No such file" in r.message
            assert reports.events == ["launch returned", "report a1"]
            stderr = (tmp_path / "sandboxes" / "a1" / "stderr").read_text()
            assert "conclave-no-such-command-xyz" in stderr

    run(body())


def test_empty_command_is_failed(tmp_path: Path) -> None:
    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", [], {}, None)
            r = await reports.wait("a1")
            assert (r.state, r.exit_code) == ("FAILED", None)

    run(body())


def test_timeout_is_failed(tmp_path: Path) -> None:
    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            start = time.monotonic()
            await ex.launch("a1", ["sh", "-c", "echo $$; exec sleep 100"], {}, 0.5)
            r = await reports.wait("a1")
            elapsed = time.monotonic() - start
            assert r.state == "FAILED"
            assert r.message == "timed out after 0.5s"
            assert 0.5 <= elapsed < 3.0
            [pid] = await aread_pids(tmp_path / "sandboxes" / "a1" / "stdout", 1)
            assert not alive(pid)

    run(body())


def test_kill_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids: list[int] = []

    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", TREE, {}, None)
            pids.extend(await aread_pids(tmp_path / "sandboxes" / "a1" / "stdout", 2))
            assert all(alive(p) for p in pids)
            assert ex.running() == {"a1"}
            ex.kill("a1", "job cancelled")
            r = await reports.wait("a1")
            assert (r.state, r.message) == ("KILLED", "killed: job cancelled")
            assert ex.running() == set()
            await apoll(lambda: not any(alive(p) for p in pids), 5.0, "task and grandchild to exit")
            ex.kill("a1", "again")  # unknown attempt: no-op

    try:
        run(body())
    finally:
        reap(pids)


def test_kill_escalates_to_sigkill_after_grace(tmp_path: Path) -> None:
    pids: list[int] = []

    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", ["sh", "-c", "trap '' TERM; echo $$; sleep 100 & echo $!; wait"], {}, None)
            pids.extend(await aread_pids(tmp_path / "sandboxes" / "a1" / "stdout", 2))
            start = time.monotonic()
            ex.kill("a1", "stubborn")
            r = await reports.wait("a1", timeout=10.0)
            elapsed = time.monotonic() - start
            assert (r.state, r.message) == ("KILLED", "killed: stubborn")
            assert r.exit_code == 128 + signal.SIGKILL
            assert executor_module.KILL_GRACE_S - 0.2 <= elapsed < executor_module.HARD_KILL_AFTER_S
            await apoll(lambda: not any(alive(p) for p in pids), 5.0, "task and grandchild to exit")

    try:
        run(body())
    finally:
        reap(pids)


def test_background_children_of_a_finished_task_are_cleaned_up(tmp_path: Path) -> None:
    pids: list[int] = []

    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", ["sh", "-c", "sleep 100 & echo $!"], {}, None)
            r = await reports.wait("a1")
            assert r.state == "FINISHED"
            pids.extend(await aread_pids(tmp_path / "sandboxes" / "a1" / "stdout", 1))
            await apoll(lambda: not alive(pids[0]), 5.0, "background child to exit")

    try:
        run(body())
    finally:
        reap(pids)


def test_lease_expiry_fences_the_task(tmp_path: Path) -> None:
    pids: list[int] = []
    lease = tmp_path / "lease"

    async def body() -> None:
        async with executor(tmp_path, lease_file=lease) as (ex, reports):
            deadline = time.monotonic() + 0.4
            ex.renew_lease(deadline)
            await ex.launch("a1", TREE, {}, None)
            pids.extend(await aread_pids(tmp_path / "sandboxes" / "a1" / "stdout", 2))
            r = await reports.wait("a1")
            assert (r.state, r.message) == ("LOST", "fenced: lease expired")
            assert reports.at["a1"] >= deadline
            await apoll(lambda: not any(alive(p) for p in pids), 5.0, "fenced task to exit")

    try:
        run(body())
    finally:
        reap(pids)


def test_lease_renewed_once_then_lapsing_fences_after_the_new_deadline(tmp_path: Path) -> None:
    lease = tmp_path / "state" / "lease"

    async def body() -> None:
        async with executor(tmp_path, lease_file=lease) as (ex, reports):
            first = time.monotonic() + 1.0
            ex.renew_lease(first)
            await ex.launch("a1", ["sleep", "100"], {}, None)
            second = time.monotonic() + 1.0
            ex.renew_lease(second)
            assert time.monotonic() < first, "renewal came too late to test anything"
            assert float(lease.read_text()) == second
            r = await reports.wait("a1")
            assert (r.state, r.message) == ("LOST", "fenced: lease expired")
            assert reports.at["a1"] >= second

    run(body())


def test_missing_lease_file_means_no_fencing(tmp_path: Path) -> None:
    async def body() -> None:
        async with executor(tmp_path, lease_file=tmp_path / "no-such-lease") as (ex, reports):
            await ex.launch("a1", ["sh", "-c", "sleep 0.2"], {}, None)
            assert await reports.wait("a1") == ExitReport("a1", "FINISHED", 0, "exit code 0")

    run(body())


def test_duplicate_launch_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spawns: list[tuple[Any, ...]] = []
    real = asyncio.create_subprocess_exec

    async def counting(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        spawns.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", counting)

    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", ["sleep", "100"], {}, None)
            await ex.launch("a1", ["sleep", "100"], {}, None)
            assert ex.running() == {"a1"}
            assert len(spawns) == 1
            ex.kill("a1", "done")
            await reports.wait("a1")
            assert len(reports.items) == 1

    run(body())


def test_shutdown_kills_every_attempt(tmp_path: Path) -> None:
    pids: list[int] = []

    async def body() -> None:
        reports = Reports()
        ex = Executor(tmp_path / "sandboxes", reports)
        ids = ["a1", "a2", "a3"]
        for aid in ids:
            await ex.launch(aid, ["sh", "-c", "echo $$; exec sleep 100"], {}, None)
        for aid in ids:
            pids.extend(await aread_pids(tmp_path / "sandboxes" / aid / "stdout", 1))
        assert ex.running() == set(ids)
        start = time.monotonic()
        await ex.shutdown()
        assert time.monotonic() - start < executor_module.SHUTDOWN_TIMEOUT_S + 0.5
        assert ex.running() == set()
        assert sorted((r.attempt_id, r.state, r.message) for r in reports.items) == [
            (aid, "KILLED", "killed: node shutting down") for aid in ids
        ]
        await apoll(lambda: not any(alive(p) for p in pids), 5.0, "tasks to exit")
        await ex.launch("late", ["true"], {}, None)
        r = await reports.wait("late")
        assert (r.state, r.message) == ("KILLED", "killed: node shutting down")

    try:
        run(body())
    finally:
        reap(pids)


def test_sandbox_names_are_filesystem_safe(tmp_path: Path) -> None:
    assert sandbox_name("job-1.task_a.0") == "job-1.task_a.0"
    for weird in ["../../etc", "a/b", "a b:c", "..", ".", "", "é" * 200]:
        name = sandbox_name(weird)
        assert name and "/" not in name and not name.startswith(".")
        assert len(name) <= 100
    assert sandbox_name("a/b") != sandbox_name("a_b")

    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("../job/1 x", ["sh", "-c", 'echo "$CONCLAVE_SANDBOX"'], {}, None)
            assert (await reports.wait("../job/1 x")).state == "FINISHED"
            [sandbox] = list((tmp_path / "sandboxes").iterdir())
            assert (sandbox / "stdout").read_text().strip() == str(sandbox)

    run(body())


def test_runs_under_uvloop(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", ["sh", "-c", "echo hi"], {}, None)
            assert (await reports.wait("a1")).state == "FINISHED"
            await ex.launch("a2", ["sleep", "100"], {}, None)
            ex.kill("a2", "test")
            assert (await reports.wait("a2")).state == "KILLED"

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(body(), 30.0))
    assert (tmp_path / "sandboxes" / "a1" / "stdout").read_text() == "hi\n"


def test_supervisor_argument_parsing() -> None:
    opts = parse_args(["--timeout", "2.5", "--lease-file=/x", "--", "echo", "--", "x"])
    assert opts.timeout_s == 2.5
    assert opts.lease_file == "/x"
    assert opts.argv == ["echo", "--", "x"]
    assert parse_args(["--timeout", "0", "--", "true"]).timeout_s is None
    for bad in [[], ["--"], ["--timeout"], ["--timeout", "soon", "--", "x"], ["--bogus", "--", "x"]]:
        with pytest.raises(UsageError):
            parse_args(bad)


NODE_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from node.agent.executor import Executor

async def main() -> None:
    lease = Path(sys.argv[2]) if sys.argv[2] != "-" else None
    ex = Executor(Path(sys.argv[1]), lambda report: None, lease_file=lease)
    if lease is not None:
        ex.renew_lease(time.monotonic() + float(sys.argv[3]))
    await ex.launch("a1", ["sh", "-c", "echo $$; sleep 100 & echo $!; wait"], {}, None)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start_node(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "fake_node.py"
    script.write_text(NODE_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(tmp_path / "fake_node.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "sandboxes"), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )


def stop_node(node: subprocess.Popen[bytes]) -> None:
    if node.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            node.send_signal(signal.SIGCONT)
            node.kill()
    node.wait(timeout=10)


def test_tasks_die_with_a_sigkilled_node(tmp_path: Path) -> None:
    node = start_node(tmp_path, "-")
    pids: list[int] = []
    try:
        pids.extend(read_pids(tmp_path / "sandboxes" / "a1" / "stdout", 2))
        assert all(alive(p) for p in pids)
        node.kill()
        node.wait(timeout=5)
        poll(lambda: not any(alive(p) for p in pids), 5.0, "orphaned task and grandchild to exit")
    finally:
        stop_node(node)
        reap(pids)


def test_frozen_node_tasks_are_fenced(tmp_path: Path) -> None:
    node = start_node(tmp_path, str(tmp_path / "lease"), "1.5")
    pids: list[int] = []
    try:
        pids.extend(read_pids(tmp_path / "sandboxes" / "a1" / "stdout", 2))
        node.send_signal(signal.SIGSTOP)
        poll(lambda: not any(alive(p) for p in pids), 10.0, "tasks of a frozen node to be fenced")
        result_file = tmp_path / "sandboxes" / "a1" / ".result"
        poll(result_file.exists, 5.0, "the supervisor's result file")
        assert json.loads(result_file.read_text())["outcome"] == "fenced"
        assert node.poll() is None
    finally:
        stop_node(node)
        reap(pids)


def test_task_dies_with_a_sigkilled_supervisor(tmp_path: Path) -> None:
    pids: list[int] = []

    async def body() -> None:
        async with executor(tmp_path) as (ex, reports):
            await ex.launch("a1", ["sh", "-c", "echo $$; exec sleep 100"], {}, None)
            [pid] = await aread_pids(tmp_path / "sandboxes" / "a1" / "stdout", 1)
            pids.append(pid)
            supervisor = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
            os.kill(supervisor, signal.SIGKILL)
            r = await reports.wait("a1")
            assert (r.state, r.exit_code) == ("FAILED", None)
            assert "SIGKILL" in r.message
            await apoll(lambda: not alive(pid), 5.0, "task of a killed supervisor to exit")

    try:
        run(body())
    finally:
        reap(pids)
