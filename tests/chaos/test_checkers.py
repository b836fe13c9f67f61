"""The checkers on synthetic histories: each must catch its violation and pass the clean case."""

from __future__ import annotations

import json
from pathlib import Path

from chaos import checkers
from chaos.checkers import Attempt, StatusSample
from chaos.history import History, Submission, op_counts, submissions


def att(aid: str, agent: str, times: list[float], task: str = "t0", job: str = "j1", cpus: float = 1.0,
        mem: float = 256, ended: bool = True, pid: int = 1) -> Attempt:
    return Attempt(aid, agent, job, task, cpus, mem, pid, tuple(times), ended)


def ticks(start: float, end: float, step: float = 0.1) -> list[float]:
    n = round((end - start) / step)
    return [start + i * step for i in range(n + 1)]


# ---------------------------------------------------------------- overlap


def test_sequential_attempts_do_not_overlap() -> None:
    a = att("a1", "n1", ticks(0, 2), ended=False)
    b = att("a2", "n2", ticks(2.5, 4))
    v, w = checkers.check_overlaps([a, b])
    assert v == [] and w == []


def test_concurrent_attempts_overlap() -> None:
    a = att("a1", "n1", ticks(0, 10), ended=False)
    b = att("a2", "n2", ticks(6, 12))
    v, _ = checkers.check_overlaps([a, b])
    assert len(v) == 1 and v[0].kind == "overlap"
    assert abs(v[0].detail["overlap_s"] - 4.0) < 0.05


def test_different_tasks_may_run_together() -> None:
    a = att("a1", "n1", ticks(0, 10), task="t0")
    b = att("a2", "n1", ticks(0, 10), task="t1")
    assert checkers.check_overlaps([a, b])[0] == []


def test_a_stopped_attempt_is_not_executing_during_its_gap() -> None:
    # a1 ran 0-2, was stopped (no records) until 14, then wrote nothing more: killed on resume.
    a = att("a1", "n1", [*ticks(0, 2)], ended=False, pid=10)
    a = Attempt(**{**a.__dict__, "dead_at": 14.0})
    b = att("a2", "n2", ticks(8, 12))
    v, w = checkers.check_overlaps([a, b])
    assert v == []
    assert [x.kind for x in w] == ["possible-overlap"]


def test_a_record_after_resume_inside_the_other_attempt_is_an_overlap() -> None:
    a = att("a1", "n1", [*ticks(0, 2), 10.0], ended=False)
    b = att("a2", "n2", ticks(8, 12))
    v, _ = checkers.check_overlaps([a, b], max_gap_s=2.0)
    assert len(v) == 1 and v[0].detail["windows"] == [(10.0, 10.0)]


def test_parse_attempt_tolerates_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "j.t0.a1.5.jsonl"
    lines = [
        json.dumps({"ev": "start", "t": 1.0, "pid": 5, "job": "j", "task": "t0", "attempt": "a1", "agent": "n1",
                    "cpus": 0.5, "mem": 128}),
        json.dumps({"ev": "tick", "t": 1.1}),
        '{"ev": "ti',
    ]
    p.write_text("\n".join(lines))
    [a] = checkers.load_attempts(tmp_path, kills={5: 3.0})
    assert a.times == (1.0, 1.1) and not a.ended and a.dead_at == 3.0 and a.cpus == 0.5


# ---------------------------------------------------------------- resources


def test_resources_within_capacity() -> None:
    a = att("a1", "n1", ticks(0, 5), cpus=1.0, task="t0")
    b = att("b1", "n1", ticks(0, 5), cpus=1.0, task="t1")
    c = att("c1", "n1", ticks(5.05, 6), cpus=1.5, task="t2")
    v, _ = checkers.check_resources([a, b, c], {"n1": (2.0, 1024)})
    assert v == []


def test_resources_oversubscribed_cpus_and_mem() -> None:
    a = att("a1", "n1", ticks(0, 5), cpus=1.5, task="t0")
    b = att("b1", "n1", ticks(4, 6), cpus=1.0, task="t1")
    v, _ = checkers.check_resources([a, b], {"n1": (2.0, 1024)})
    assert [x.kind for x in v] == ["oversubscribed"] and v[0].detail["cpus"] == 2.5
    m1 = att("a1", "n2", ticks(0, 5), cpus=0.5, mem=512, task="t0")
    m2 = att("b1", "n2", ticks(1, 2), cpus=0.5, mem=768, task="t1")
    v, _ = checkers.check_resources([m1, m2], {"n2": (2.0, 1024)})
    assert v and v[0].detail["mem_mb"] == 1280


def test_unknown_agent_is_a_warning() -> None:
    v, w = checkers.check_resources([att("a1", "zz", [0.0, 1.0])], {"n1": (2.0, 1024)})
    assert v == [] and w[0].kind == "unknown-agent"


# ---------------------------------------------------------------- acknowledged / duplicates


def sub(name: str, outcome: str, ids: set[str] | None = None, requests: int = 1) -> Submission:
    return Submission(key=f"k-{name}", name=name, outcome=outcome, ids=ids or set(), requests=requests)


def test_acknowledged_jobs_present_and_terminal() -> None:
    subs = {"a": sub("a", "ok", {"1"}), "b": sub("b", "ok", {"2"}), "c": sub("c", "info")}
    final = [{"id": "1", "name": "a", "state": "complete"}, {"id": "2", "name": "b", "state": "cancelled"}]
    assert checkers.check_acknowledged(subs, final, 60) == []


def test_lost_and_stuck_jobs_are_violations() -> None:
    subs = {"a": sub("a", "ok", {"1"}), "b": sub("b", "ok", {"2"}), "c": sub("c", "ok", {"3", "4"})}
    final = [{"id": "2", "name": "b", "state": "running"}, {"id": "3", "name": "c", "state": "failed"}]
    kinds = sorted(v.kind for v in checkers.check_acknowledged(subs, final, 60))
    assert kinds == ["ack-id-mismatch", "lost", "lost", "not-terminal"]


def test_unknown_submission_may_appear_once_but_not_twice() -> None:
    subs = {"a": sub("a", "info", requests=3), "b": sub("b", "info"), "c": sub("c", "ok", {"9"})}
    final = [{"id": "1", "name": "a", "state": "complete"}, {"id": "9", "name": "c", "state": "complete"}]
    v, stats = checkers.check_duplicates(subs, final)
    assert v == [] and stats == {"unknown_present": 1, "unknown_absent": 1}
    v, _ = checkers.check_duplicates(subs, [*final, {"id": "2", "name": "a", "state": "complete"}])
    assert [x.kind for x in v] == ["duplicate"] and v[0].detail["outcome"] == "info"


def test_refused_submission_must_not_exist() -> None:
    v, _ = checkers.check_duplicates({"a": sub("a", "fail")}, [{"id": "1", "name": "a", "state": "complete"}])
    assert [x.kind for x in v] == ["failed-but-present"]


def test_history_folds_retries_into_one_submission(tmp_path: Path) -> None:
    h = History(tmp_path / "h.jsonl")
    op = h.invoke(0, "submit", name="a", key="k")
    h.complete(op, 0, "submit", "info", name="a", key="k")
    op = h.invoke(0, "submit", name="a", key="k")
    h.complete(op, 0, "submit", "ok", name="a", key="k", job_id="7")
    op = h.invoke(1, "submit", name="b", key="kb")
    h.complete(op, 1, "submit", "fail", name="b", key="kb")
    h.invoke(1, "submit", name="c", key="kc")  # never completed: unknown
    h.close()
    subs = submissions(h.entries)
    assert subs["a"].outcome == "ok" and subs["a"].ids == {"7"} and subs["a"].requests == 2
    assert subs["b"].outcome == "fail" and subs["c"].outcome == "info"
    assert op_counts(h.entries) == {"ok": 1, "fail": 1, "info": 2}
    assert len((tmp_path / "h.jsonl").read_text().splitlines()) == 7


# ---------------------------------------------------------------- replicas, leader


def s(rnd: int, node: str, idx: int, digest: str, leader: str | None = "n1", role: str = "follower") -> StatusSample:
    return StatusSample(float(rnd), rnd, node, idx, digest, leader, role)


def test_replicas_agree() -> None:
    samples = [s(0, "n1", 5, "a"), s(0, "n2", 6, "b"), s(1, "n1", 6, "b"), s(1, "n2", 6, "b")]
    v, info = checkers.check_replicas(samples, ["n1", "n2"])
    assert v == [] and info["agreed"]["index"] == 6


def test_replicas_diverge_at_one_index() -> None:
    samples = [s(0, "n1", 6, "b"), s(0, "n2", 6, "c")]
    kinds = sorted(x.kind for x in checkers.check_replicas(samples, ["n1", "n2"])[0])
    assert kinds == ["divergent", "not-converged"]


def test_replicas_never_seen_together() -> None:
    samples = [s(0, "n1", 6, "b"), s(0, "n2", 7, "c"), s(1, "n1", 8, "d")]
    assert [x.kind for x in checkers.check_replicas(samples, ["n1", "n2"])[0]] == ["not-converged"]


def test_leader_agreement() -> None:
    ok = [s(0, "n1", 1, "x", "n1", "leader"), s(0, "n2", 1, "x", "n1"), s(0, "n3", 1, "x", "n1")]
    assert checkers.leader_agreement(ok, ["n1", "n2", "n3"]) == "n1"
    split = [s(0, "n1", 1, "x", "n1", "leader"), s(0, "n2", 1, "x", "n2", "leader"), s(0, "n3", 1, "x", "n1")]
    assert checkers.leader_agreement(split, ["n1", "n2", "n3"]) is None
    missing = ok[:2]
    assert checkers.leader_agreement(missing, ["n1", "n2", "n3"]) is None
    assert checkers.check_recovery(None, 30)[0].kind == "no-recovery"
    assert checkers.check_recovery(1.0, 30) == []


def test_scan_node_logs_groups_critical_lines(tmp_path: Path) -> None:
    (tmp_path / "n1.log").write_text(
        "2026-01-01 10:00:00,000 n1 conclave.node INFO fine\n"
        "2026-01-01 10:00:01,000 n1 pysyncobj.syncobj CRITICAL truncating already-applied log entries from "
        "index 345 (last applied: 346)\n"
        "2026-01-01 10:00:02,000 n1 pysyncobj.syncobj CRITICAL truncating already-applied log entries from "
        "index 490 (last applied: 490)\n"
    )
    (tmp_path / "n2.log").write_text("all good\n")
    [w] = checkers.scan_node_logs(tmp_path)
    assert w.kind == "node-log" and w.detail["node"] == "n1" and w.detail["count"] == 2
