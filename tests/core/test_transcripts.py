"""Recorded scenarios for the pure core, in the style of etcd-io/raft's testdata.

Each file in ``testdata/`` is a sequence of blocks. A block starts with a directive line (``> ``) and is followed
by the output it must produce:

    > SubmitJob {"request_id": "r1", "job_id": "j1", "framework_id": "workflow", "spec": {...}, "now": 1000}
    ok {"job_id": "j1", "duplicate": false}

``> show`` prints the agents and jobs compactly. Run with ``REWRITE=1`` to regenerate the expected output after
an intended change, then read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from consensus.apply import Machine
from consensus.commands import COMMAND_CLASSES
from consensus.state import State

DATA = Path(__file__).parent / "testdata"
CLASSES = {cls.__name__: cls for cls in COMMAND_CLASSES.values()}


def show(st: State) -> list[str]:
    out = [f"clock={st.clock} leader_term={st.leader_term} applied={st.applied}"]
    for a in st.agents.values():
        out.append(
            f"agent {a.id} {a.state} used={a.used.cpus_m}m/{a.used.mem_mb}MB of {a.total.cpus_m}m/{a.total.mem_mb}MB "
            f"live={','.join(a.attempts) or '-'}"
        )
    for j in st.jobs.values():
        tasks = " ".join(
            f"{t.spec.name}={t.state}" + (f"@{st.attempts[t.attempts[-1]].agent_id}" if t.attempts else "")
            for t in j.tasks.values()
        )
        out.append(f"job {j.id} {j.state}: {tasks}")
    runnable = " ".join(f"{j}/{t}" for j, t in st.runnable) or "-"
    out.append(f"runnable: {runnable}")
    return out


def run_transcript(text: str) -> str:
    m = Machine()
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    rendered = []
    for block in blocks:
        lines = block.splitlines()
        comments = [ln for ln in lines if ln.startswith("#")]
        directive = next(ln for ln in lines if ln.startswith("> "))
        body = directive[2:].strip()
        if body == "show":
            output = show(m.state)
        else:
            name, _, args = body.partition(" ")
            cmd = CLASSES[name](**json.loads(args))
            r = m.apply_command(cmd)
            output = [f"ok {json.dumps(r.value, sort_keys=True)}" if r.ok else f"rejected {r.code}: {r.message}"]
        rendered.append("\n".join([*comments, directive, *output]))
    return "\n\n".join(rendered) + "\n"


@pytest.mark.parametrize("path", sorted(DATA.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    text = path.read_text()
    actual = run_transcript(text)
    if os.environ.get("REWRITE"):
        path.write_text(actual)
        return
    assert actual == text
