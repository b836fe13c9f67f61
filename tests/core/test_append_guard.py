"""The follower-side guard against pysyncobj truncating a log on a stale append (no term conflict)."""

from __future__ import annotations

from consensus.raft import skip_held_entries

# our log: index -> term
LOG = {1: 1, 2: 1, 3: 2, 4: 3, 5: 3, 6: 3}


def term_at(i: int) -> int | None:
    return LOG.get(i)


def append(prev: int, prev_term: int, entries: list[tuple[bytes, int, int]], term: int = 3) -> dict[str, object]:
    return {
        "type": "append_entries",
        "term": term,
        "commit_index": 4,
        "prevLogIdx": prev,
        "prevLogTerm": prev_term,
        "entries": entries,
    }


def test_a_delayed_append_we_already_hold_becomes_a_heartbeat_at_our_end() -> None:
    msg = append(3, 2, [(b"x", 4, 3)])
    out = skip_held_entries(msg, current_term=3, last_index=6, commit_index=4, term_at=term_at)
    assert out is not msg and out["prevLogIdx"] == 6 and out["prevLogTerm"] == 3 and out["entries"] == []
    assert out["commit_index"] == 4
    hb = append(2, 1, [])
    assert skip_held_entries(hb, 3, 6, 4, term_at)["prevLogIdx"] == 6


def test_conflicts_and_other_cases_pass_through_unchanged() -> None:
    cases = [
        append(3, 2, [(b"x", 4, 2)]),  # a term conflict at 4: Raft truncates
        append(3, 1, [(b"x", 4, 3)]),  # prevLogTerm mismatch: the leader must back up
        append(5, 3, [(b"x", 6, 3)]),  # reaches our end: normal path
        append(6, 3, [(b"x", 7, 3)]),  # extends our log
        append(3, 2, [(b"x", 4, 3)], term=2),  # an older term: pysyncobj refuses it
        {**append(3, 2, [(b"x", 4, 3)]), "transmission": "start"},
    ]
    for msg in cases:
        assert skip_held_entries(msg, 3, 6, 4, term_at) is msg


def test_an_append_from_a_newer_term_keeps_what_is_committed() -> None:
    msg = append(3, 2, [(b"x", 4, 3)], term=4)
    out = skip_held_entries(msg, 3, 6, 5, term_at)  # our last entry is of term 3, not 4: keep through commit 5
    assert out["prevLogIdx"] == 5 and out["prevLogTerm"] == 3


def test_a_tail_from_an_older_term_is_kept_only_up_to_the_commit_index() -> None:
    log = {1: 1, 2: 1, 3: 2, 4: 2, 5: 2}  # our last entries are of term 2, the leader is in term 3
    msg = append(1, 1, [(b"x", 2, 1)])
    out = skip_held_entries(msg, 3, 5, 3, log.get)
    assert out["prevLogIdx"] == 3 and out["prevLogTerm"] == 2 and out["entries"] == []  # 4, 5 may go: uncommitted
    assert skip_held_entries(msg, 3, 5, 2, log.get) is msg  # nothing beyond the append is committed: normal path
