import msgpack
from hypothesis import given
from hypothesis import strategies as st

from consensus.apply import Machine
from consensus.codec import LOG_VERSION, DecodeError, decode, encode
from consensus.commands import COMMAND_CLASSES, CancelJob, CommandType, Launch, StatusUpdate

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def test_roundtrip_every_command_type() -> None:
    samples = {
        CommandType.LAUNCH: Launch(3, 1000, [["j", "t", "a"]]),
        CommandType.CANCEL_JOB: CancelJob("j", "why", 5),
        CommandType.STATUS_UPDATE: StatusUpdate("a", "i", 7, [["j/t/1", "RUNNING", None, ""]]),
    }
    for ctype, cmd in samples.items():
        data = encode(cmd)
        assert msgpack.unpackb(data)[:2] == [LOG_VERSION, int(ctype)]
        assert decode(data) == cmd


def test_command_numbers_are_append_only() -> None:
    # Released numbers keep their meaning forever; this list may only grow.
    assert [(t.name, t.value) for t in CommandType] == [
        ("LEADER_ELECTED", 1),
        ("REGISTER_FRAMEWORK", 2),
        ("REGISTER_AGENT", 3),
        ("HEARTBEAT", 4),
        ("SUBMIT_JOB", 5),
        ("CANCEL_JOB", 6),
        ("LAUNCH", 7),
        ("STATUS_UPDATE", 8),
        ("AGENT_LOST", 9),
        ("DRAIN_AGENT", 10),
        ("RETRY_JOB", 11),
        ("KILL_ATTEMPTS", 12),
        ("BATCH", 13),
        ("PURGE_JOBS", 14),
    ]
    assert set(COMMAND_CLASSES) == set(CommandType)


@given(st.binary(max_size=200))
def test_garbage_is_a_decode_error_never_a_crash(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError as e:
        assert e.code in {"malformed", "unsupported_version", "unknown_command"}


@given(st.lists(st.one_of(I64, st.text(max_size=5), st.none(), st.lists(I64, max_size=3)), max_size=5))
def test_wrongly_typed_bodies_are_rejected_and_change_nothing(body: list[object]) -> None:
    m = Machine()
    for ctype in CommandType:
        before = m.state.to_wire()[2:]
        result = m.apply(msgpack.packb([LOG_VERSION, int(ctype), body]))
        if not result.ok:
            assert m.state.to_wire()[2:] == before


def test_unknown_version_and_type_are_rejected() -> None:
    m = Machine()
    r1 = m.apply(msgpack.packb([99, 1, [1, "n1", 5]]))
    r2 = m.apply(msgpack.packb([LOG_VERSION, 250, []]))
    assert (r1.ok, r1.code) == (False, "unsupported_version")
    assert (r2.ok, r2.code) == (False, "unknown_command")
    assert m.state.applied == 2 and m.state.leader_term == 0
