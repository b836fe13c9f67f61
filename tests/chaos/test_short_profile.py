"""The short chaos profile (every nemesis, real node processes, netns backend) through pytest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.chaos, pytest.mark.usefixtures("need_netns")]


def test_short_profile_has_no_violations() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "run", "--profile", "short"],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    print(proc.stdout[-20000:])
    print(proc.stderr[-5000:], file=sys.stderr)
    assert proc.returncode == 0, f"short profile failed (exit {proc.returncode}); see the table above"
