from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)  # `pytest` without `python -m` does not put the repo root on sys.path

from chaos import sysutil  # noqa: E402


def netns_unavailable() -> str | None:
    """Why the netns backend cannot run here, or None."""
    if not sysutil.is_root():
        return "needs root (network namespaces, nftables, tmpfs mounts); use --backend proxy without root"
    try:
        sysutil.ensure_tools(need_faketime=True, log=lambda m: None)
    except sysutil.CommandError as e:
        return f"cannot install the tools the netns backend needs: {e}"
    for tool in ("nft", "ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = sysutil.run(["ip", "netns", "list"], check=False)
    if probe.returncode != 0:
        return f"ip netns does not work here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def need_netns() -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
