"""The pysyncobj adapter: encode, propose, apply, snapshot, report leadership. Nothing else.

The log holds our own envelopes (:mod:`consensus.codec`). pysyncobj sees exactly one replicated method,
``_entry``, whose single argument is the envelope's bytes; with one method its numbering can never shift, and our
command types live inside the bytes where we version them.

Snapshots go through pysyncobj's serializer hooks as msgpack (never pickle): the state machine's bytes plus the
two log entries and the membership pysyncobj needs to resume. Both the journal and the dump file are always
configured together: either alone loses or wedges state on a full restart.

Durable mode (the default) syncs the journal to disk before this node sends anything that lets an entry count
as persisted: a follower's acknowledgement, or a leader's append to its followers. pysyncobj itself never syncs.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode

from consensus.apply import Machine, Result
from consensus.backend import ProposeCallback

log = logging.getLogger("conclave.raft")

SNAPSHOT_FORMAT = 1

_FAIL_CODES = {
    FAIL_REASON.QUEUE_FULL: "queue_full",
    FAIL_REASON.MISSING_LEADER: "no_leader",
    FAIL_REASON.DISCARDED: "discarded",
    FAIL_REASON.NOT_LEADER: "not_leader",
    FAIL_REASON.LEADER_CHANGED: "leader_changed",
    FAIL_REASON.REQUEST_DENIED: "denied",
}


@dataclass(frozen=True)
class RaftSettings:
    self_address: str
    partner_addresses: tuple[str, ...]
    data_dir: Path
    secret: str | None
    durable: bool = True
    min_timeout_s: float = 0.4
    max_timeout_s: float = 1.2
    append_period_s: float = 0.05
    connection_timeout_s: float = 1.5
    connection_retry_s: float = 0.2
    leader_fallback_s: float = 2.0
    snapshot_entries: int = 20_000
    snapshot_interval_s: float = 60.0


class RaftBackend(SyncObj):  # type: ignore[misc]
    def __init__(self, settings: RaftSettings, machine: Machine | None = None) -> None:
        self.machine = machine or Machine()
        self.lock = threading.RLock()
        self._durable = settings.durable
        self._dirty = False
        self._collecting = False
        self._append_pending = False
        self.fsyncs = 0
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._dump_file = str(settings.data_dir / "raft.snapshot")
        self._snapshot_pid: int | None = None
        self.snapshots = 0
        for stale in (self._dump_file + ".tmp", self._dump_file + ".writing"):
            if os.path.exists(stale):  # left by a crash mid-write; never to be renamed into place
                os.unlink(stale)
        conf = SyncObjConf(
            bindAddress=settings.self_address,
            password=settings.secret,
            journalFile=str(settings.data_dir / "raft.journal"),
            fullDumpFile=self._dump_file,
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            serializeChecker=self._snapshot_status,
            appendEntriesUseBatch=False,
            autoTick=True,
            raftMinTimeout=settings.min_timeout_s,
            raftMaxTimeout=settings.max_timeout_s,
            appendEntriesPeriod=settings.append_period_s,
            connectionTimeout=settings.connection_timeout_s,
            connectionRetryTime=settings.connection_retry_s,
            leaderFallbackTimeout=settings.leader_fallback_s,
            logCompactionMinEntries=settings.snapshot_entries,
            logCompactionMinTime=settings.snapshot_interval_s,
            dynamicMembershipChange=False,
            commandsWaitLeader=False,
            # pysyncobj splits larger entries into chunks and mis-detects the last chunk (followers raise
            # UnpicklingError); API bodies are capped at 1 MiB, so entries stay well below this.
            appendEntriesBatchSizeBytes=4 * 1024 * 1024,
        )
        super().__init__(settings.self_address, list(settings.partner_addresses), conf=conf)
        self.stale_appends_kept = 0
        self._install_append_guard()
        if self._durable:
            self._install_flush_before_ack()

    # ------------------------------------------------------------------ the one replicated entry point

    @replicated  # type: ignore[untyped-decorator]
    def _entry(self, data: bytes) -> Result:
        with self.lock:
            return self.machine.apply(data)

    def propose(self, data: bytes, callback: ProposeCallback) -> None:
        def done(result: Any, error: Any) -> None:
            if error == FAIL_REASON.SUCCESS and isinstance(result, Result):
                callback(result, None)
            else:
                callback(None, _FAIL_CODES.get(error, f"failed_{error}"))

        self._entry(data, callback=done)

    # ------------------------------------------------------------------ one append per tick, not per command

    def _checkCommandsToApply(self) -> None:
        """pysyncobj (with appendEntriesUseBatch=False) sends an append to every follower after *each* queued
        command, and in durable mode each send costs a journal sync. Collect the tick's commands first, then
        sync once and send once: one round trip carries all of them."""
        self._collecting = True
        try:
            super()._checkCommandsToApply()
        finally:
            self._collecting = False
        if self._append_pending:
            self._append_pending = False
            super()._SyncObj__sendAppendEntries()

    def _SyncObj__sendAppendEntries(self) -> None:
        if self._collecting:
            self._append_pending = True
            return
        super()._SyncObj__sendAppendEntries()

    # ------------------------------------------------------------------ leadership

    def is_leader(self) -> bool:
        return bool(self._isLeader())

    def leader_address(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else str(leader.address)

    def term(self) -> int:
        return int(self.raftCurrentTerm)

    def has_quorum(self) -> bool:
        return bool(self.hasQuorum)

    def raft_status(self) -> dict[str, object]:
        s = self.getStatus()
        return {
            "state": int(s["state"]),
            "term": int(s["raft_term"]),
            "commit_idx": int(s["commit_idx"]),
            "last_applied": int(s["last_applied"]),
            "log_len": int(s["log_len"]),
            "has_quorum": bool(s["has_quorum"]),
            "fsyncs": self.fsyncs,
            "stale_appends_kept": self.stale_appends_kept,
            "snapshots": self.snapshots,
        }

    def start(self) -> None:
        """pysyncobj starts its thread in ``__init__``; nothing more to do."""

    def stop(self) -> None:
        self.destroy()

    # ------------------------------------------------------------------ snapshots (msgpack, never pickle)

    def _write_snapshot(self, filename: str, raft_data: Any) -> None:
        """Called by pysyncobj on its tick thread, where entries are applied, so the state is exactly the state at
        the snapshot's last entry. A forked child serializes it and renames the file into place while this
        process keeps replicating (a large state takes seconds to serialize; a stalled tick thread loses its
        leadership). pysyncobj's own rename of ``filename`` then finds nothing and is ignored: the child's exit
        status, reported by :meth:`_snapshot_status`, is what counts."""
        last, prev, cluster = raft_data
        meta = {
            "format": SNAPSHOT_FORMAT,
            "last": [last[0], last[1], last[2]],
            "prev": [prev[0], prev[1], prev[2]],
            "cluster": sorted(n.address for n in cluster),
        }
        pid = os.fork()
        if pid != 0:
            self._snapshot_pid = pid
            return
        try:  # the child: one thread, a frozen copy of the state; never take locks other threads may hold
            meta["state"] = self.machine.snapshot()
            final = self._dump_file
            tmp = final + ".writing"
            with open(tmp, "wb") as f:
                f.write(msgpack.packb(meta, use_bin_type=True))
                f.flush()
                if self._durable:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            if self._durable:
                fd = os.open(os.path.dirname(os.path.abspath(final)), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            os._exit(0)
        except BaseException:
            os._exit(1)

    def _snapshot_status(self) -> int:
        pid = self._snapshot_pid
        if pid is None:
            return SERIALIZER_STATE.NOT_SERIALIZING  # type: ignore[no-any-return]
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            self._snapshot_pid = None
            return SERIALIZER_STATE.FAILED  # type: ignore[no-any-return]
        if done == 0:
            return SERIALIZER_STATE.SERIALIZING  # type: ignore[no-any-return]
        self._snapshot_pid = None
        if os.waitstatus_to_exitcode(status) == 0:
            self.snapshots += 1
            return SERIALIZER_STATE.SUCCESS  # type: ignore[no-any-return]
        log.error("writing a snapshot failed (exit status %s); the log is kept", os.waitstatus_to_exitcode(status))
        return SERIALIZER_STATE.FAILED  # type: ignore[no-any-return]

    def _read_snapshot(self, filename: str) -> tuple[Any, Any, Any]:
        with open(filename, "rb") as f:
            obj = msgpack.unpackb(f.read(), raw=False)
        if not isinstance(obj, dict) or obj.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"{filename}: not a Conclave snapshot")
        with self.lock:
            self.machine.restore(obj["state"])
        last, prev = obj["last"], obj["prev"]
        return (last[0], last[1], last[2]), (prev[0], prev[1], prev[2]), {TCPNode(a) for a in obj["cluster"]}

    # ------------------------------------------------------------------ a follower never shrinks its log needlessly

    def _install_append_guard(self) -> None:
        """pysyncobj's follower deletes every entry after ``prevLogIdx`` whenever an append is shorter than its log
        — a delayed or repeated append shrinks a log that holds committed entries, and a shrunken log can then
        vote for a candidate that lacks them. Raft deletes only on a term conflict. We rewrite such an append,
        when it conflicts with nothing we hold, into a heartbeat at the last entry we can vouch for."""
        transport = self._SyncObj__transport
        deliver = transport._onMessageReceivedCallback
        get_entries = self._SyncObj__getEntries

        def term_at(idx: int) -> int | None:
            found = get_entries(idx, 1)
            return int(found[0][2]) if found else None

        def guarded(node: Any, message: Any) -> None:
            if isinstance(message, dict) and message.get("type") == "append_entries":
                kept = skip_held_entries(
                    message,
                    current_term=self.raftCurrentTerm,
                    last_index=self._SyncObj__getCurrentLogIndex(),
                    commit_index=self.raftCommitIndex,
                    term_at=term_at,
                )
                if kept is not message:
                    self.stale_appends_kept += 1
                    message = kept
            deliver(node, message)

        transport.setOnMessageReceivedCallback(guarded)

    # ------------------------------------------------------------------ durability

    def _install_flush_before_ack(self) -> None:
        journal = self._SyncObj__raftLog
        transport = self._SyncObj__transport
        if not hasattr(journal, "flush"):
            return
        meta = getattr(journal, "_FileJournal__metaStorer", None)
        if meta is not None:
            meta.storeMeta = _durable_meta_writer(meta.getPath())
        add, send = journal.add, transport.send
        resizable = getattr(journal, "_FileJournal__journalFile", None)
        raw_file = getattr(resizable, "_ResizableFile__f", None)

        def sync() -> None:
            # On Linux, msync(MS_SYNC) of a shared file mapping is an fsync of the file's range, and pages dirtied
            # through the mapping are tracked as dirty file pages: one fdatasync covers the mmap'd records and
            # the file's size after growth. Without the file object, fall back to msync.
            try:
                if raw_file is not None:
                    os.fdatasync(raw_file.fileno())
                else:
                    journal.flush()
            except OSError as e:
                fail_stop(f"cannot sync the Raft journal: {e}")

        def add_and_mark(command: Any, idx: int, term: int) -> None:
            add(command, idx, term)
            self._dirty = True

        def flush_then_send(node: Any, message: Any) -> Any:
            if self._dirty and isinstance(message, dict) and message.get("type") in _ACK_CARRYING:
                sync()
                self._dirty = False
                self.fsyncs += 1
            return send(node, message)

        journal.add = add_and_mark
        transport.send = flush_then_send


def skip_held_entries(
    message: dict[str, Any],
    current_term: int,
    last_index: int,
    commit_index: int,
    term_at: Callable[[int], int | None],
) -> dict[str, Any]:
    """Rewrite an append so that pysyncobj's follower deletes only what Raft deletes: entries that conflict.

    pysyncobj deletes every entry after ``prevLogIdx`` whenever it holds more, then re-adds the append's entries.
    We move ``prevLogIdx`` forward past the entries we already hold with the same terms, so the deletion starts at
    the first conflict or not at all. An append that ends inside our log without a conflict is moved to the last
    entry we can vouch for: our last entry when it is of the leader's term (the leader wrote it, so by Raft's
    log-matching property our log is a prefix of the leader's), otherwise our commit index (committed entries are
    in every later leader's log). Acknowledging up to that entry is then true. Returns ``message`` itself when
    nothing changes."""
    if "prevLogIdx" not in message or message.get("transmission") is not None or message.get("serialized"):
        return message
    term = message.get("term")
    if not isinstance(term, int) or term < current_term:
        return message  # pysyncobj refuses appends from older terms by itself
    prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
    if term_at(prev_idx) != prev_term:
        return message  # the leader must back up: pysyncobj answers that
    entries = list(message.get("entries") or [])
    matched = prev_idx
    held = 0
    for entry in entries:
        if entry[1] > last_index or term_at(entry[1]) != entry[2]:
            break
        matched = entry[1]
        held += 1
    remaining = entries[held:]
    new_prev = matched
    if not remaining:
        keep = last_index if term_at(last_index) == term else min(commit_index, last_index)
        new_prev = max(matched, keep)
    if new_prev == prev_idx:
        return message
    new_term = term_at(new_prev)
    if new_term is None:
        return message
    out = dict(message)
    out["entries"] = remaining
    out["prevLogIdx"] = new_prev
    out["prevLogTerm"] = new_term
    return out


def fail_stop(reason: str) -> None:
    """A node that cannot make its promises durable must not make them: stop at once (exit status 75), before
    anything counts this node's copy. A supervisor (systemd, the dev cluster, the chaos harness) restarts it."""
    log.critical("%s; stopping the node", reason)
    logging.shutdown()
    os._exit(75)


def _durable_meta_writer(path: str) -> Any:
    """Term and vote must survive power loss before this node votes or acts on a new term (Raft's rule)."""
    from pysyncobj.journal import dumps

    directory = os.path.dirname(os.path.abspath(path))

    def store(meta: Any) -> None:
        tmp = path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(dumps(meta))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            fail_stop(f"cannot persist Raft term/vote to {path}: {e}")

    return store


# Messages after which a peer may count our copy of an entry: the leader's appends (its own copy counts toward the
# majority) and a follower's acknowledgement.
_ACK_CARRYING = frozenset({"append_entries", "next_node_idx"})
