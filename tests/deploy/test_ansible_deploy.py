"""The Ansible deployment, end to end, in systemd-nspawn hosts (tests/deploy/nspawn_cluster.py).

Run: ``pytest -m deploy tests/deploy -s`` as root. Skipped, with the reason, where the machine
cannot run it (not root, no systemd-nspawn, cgroups not writable, no Debian mirror).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("nspawn_cluster.py")
SKIP_EXIT = 77
TIMEOUT_S = float(os.environ.get("CONCLAVE_DEPLOY_TIMEOUT", "1800"))

pytestmark = pytest.mark.deploy


def test_ansible_deploy_in_nspawn_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    if sys.platform != "linux":
        pytest.skip("systemd-nspawn hosts need Linux")
    if os.geteuid() != 0:
        pytest.skip("needs root: systemd-nspawn, network namespaces, overlay mounts and cgroups")

    proc = subprocess.Popen(
        [sys.executable, "-u", str(HARNESS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            with capsys.disabled():
                sys.stdout.write(line)
                sys.stdout.flush()
            if time.monotonic() > deadline:
                proc.terminate()  # the harness cleans up on SIGTERM
                break
        rc = proc.wait(timeout=120)
    except BaseException:
        proc.terminate()
        proc.wait(timeout=120)
        raise
    output = "".join(lines)
    if time.monotonic() > deadline:
        pytest.fail(f"deploy harness exceeded {TIMEOUT_S:.0f}s\n{output[-20000:]}", pytrace=False)
    if rc == SKIP_EXIT:
        reason = next((ln[len("SKIP: ") :].strip() for ln in lines if ln.startswith("SKIP: ")), "no reason given")
        pytest.skip(f"deploy harness cannot run here: {reason}")
    if rc != 0:
        pytest.fail(f"deploy harness failed (exit {rc}):\n{output[-20000:]}", pytrace=False)
