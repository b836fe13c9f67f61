"""The follower-side guard that makes pysyncobj delete only conflicting entries, as Raft does."""

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


def guard(msg: dict[str, object], last: int = 6, commit: int = 4, log: dict[int, int] = LOG) -> dict[str, object]:
    return skip_held_entries(msg, current_term=3, last_index=last, commit_index=commit, term_at=log.get)


def test_a_delayed_append_we_already_hold_becomes_a_heartbeat_at_our_end() -> None:
    msg = append(3, 2, [(b"x", 4, 3)])
    out = guard(msg)
    assert out is not msg and out["prevLogIdx"] == 6 and out["prevLogTerm"] == 3 and out["entries"] == []
    assert out["commit_index"] == 4
    assert guard(append(2, 1, []))["prevLogIdx"] == 6


def test_a_repeated_append_that_extends_our_log_skips_what_we_hold() -> None:
    msg = append(3, 2, [(b"x", 4, 3), (b"x", 5, 3), (b"x", 6, 3), (b"y", 7, 3), (b"z", 8, 3)])
    out = guard(msg)
    assert out["prevLogIdx"] == 6 and out["prevLogTerm"] == 3
    assert [e[1] for e in out["entries"]] == [7, 8]  # type: ignore[union-attr]


def test_a_conflict_is_still_deleted_from_the_first_conflicting_entry() -> None:
    msg = append(3, 2, [(b"x", 4, 3), (b"n", 5, 4), (b"n", 6, 4)], term=4)
    out = skip_held_entries(msg, current_term=3, last_index=6, commit_index=4, term_at=term_at)
    assert out["prevLogIdx"] == 4 and [e[1] for e in out["entries"]] == [5, 6]  # type: ignore[union-attr]


def test_other_cases_pass_through_unchanged() -> None:
    cases = [
        append(3, 2, [(b"x", 4, 2)]),  # a term conflict right after prev: pysyncobj truncates from 4
        append(3, 1, [(b"x", 4, 3)]),  # prevLogTerm mismatch: the leader must back up
        append(6, 3, [(b"x", 7, 3)]),  # plain extension
        append(3, 2, [(b"x", 4, 3)], term=2),  # an older term: pysyncobj refuses it
        {**append(3, 2, [(b"x", 4, 3)]), "transmission": "start"},
    ]
    for msg in cases:
        assert guard(msg) is msg


def test_an_append_from_a_newer_term_keeps_what_is_committed() -> None:
    msg = append(3, 2, [(b"x", 4, 3)], term=4)
    out = skip_held_entries(msg, current_term=3, last_index=6, commit_index=5, term_at=term_at)
    assert out["prevLogIdx"] == 5 and out["prevLogTerm"] == 3  # our last entry is of term 3, not 4


def test_a_tail_from_an_older_term_is_kept_only_up_to_the_commit_index() -> None:
    log = {1: 1, 2: 1, 3: 2, 4: 2, 5: 2}  # our last entries are of term 2, the leader is in term 3
    msg = append(1, 1, [(b"x", 2, 1)])
    out = guard(msg, last=5, commit=3, log=log)
    assert out["prevLogIdx"] == 3 and out["prevLogTerm"] == 2 and out["entries"] == []  # 4, 5 may go
    assert guard(msg, last=5, commit=2, log=log)["prevLogIdx"] == 2  # only what the append itself proves
