"""chaos/task.py writes its records with the real clock even when started under libfaketime."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos import checkers, sysutil

TASK = Path(__file__).resolve().parents[2] / "chaos" / "task.py"


def run_task(tmp_path: Path, extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "CONCLAVE_JOB_ID": "job/1", "CONCLAVE_TASK_NAME": "t0", "CONCLAVE_ATTEMPT_ID": "job/1/t0/1",
           "CONCLAVE_AGENT_ID": "n2", **extra_env}
    return subprocess.run(
        [sys.executable, "-S", str(TASK), "--dir", str(tmp_path), "--cpus", "1.5", "--mem", "256",
         "--duration", "0.3", "--tick", "0.1", *args],
        env=env, timeout=30, check=False,
    )


def test_records_start_ticks_end(tmp_path: Path) -> None:
    before = time.time()
    assert run_task(tmp_path, {}).returncode == 0
    [a] = checkers.load_attempts(tmp_path)
    assert (a.job_id, a.task_name, a.attempt_id, a.agent_id) == ("job/1", "t0", "job/1/t0/1", "n2")
    assert a.cpus == 1.5 and a.mem_mb == 256 and a.ended
    assert before <= a.start <= a.last <= time.time() and len(a.times) == 5


def test_exit_code_is_passed_through(tmp_path: Path) -> None:
    assert run_task(tmp_path, {}, "--exit", "3").returncode == 3


@pytest.mark.skipif(sysutil.find_faketime() is None, reason="libfaketime is not installed (apt-get install faketime)")
def test_skew_does_not_reach_the_records(tmp_path: Path) -> None:
    skew = tmp_path / "skew"
    skew.write_text("+3600\n")
    lib = sysutil.find_faketime()
    assert lib is not None
    before = time.time()
    assert run_task(tmp_path, {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": str(skew)}).returncode == 0
    [a] = checkers.load_attempts(tmp_path)
    assert a.start - before < 60
