"""The log entry format we own: a msgpack array ``[version, command type, body]``.

``body`` is a msgpack array of the command's fields in declaration order. Decoding never trusts its input:
whatever a peer's bytes contain, the result is either a well-typed command or a :class:`DecodeError`, and the
state machine turns that error into the same rejection on every replica.
"""

from __future__ import annotations

from typing import Any

import msgpack

from consensus.commands import COMMAND_CLASSES, FIELD_TYPES, TYPE_OF, Command, CommandType, field_ok

LOG_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})


class DecodeError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode(cmd: Command) -> bytes:
    ctype = TYPE_OF[type(cmd)]
    body = [getattr(cmd, name) for name, _ in FIELD_TYPES[type(cmd)]]
    data: bytes = msgpack.packb([LOG_VERSION, int(ctype), body], use_bin_type=True)
    return data


def decode(data: bytes) -> Command:
    if not isinstance(data, bytes | bytearray):
        raise DecodeError("malformed", "entry is not bytes")
    try:
        obj: Any = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types for garbage
        raise DecodeError("malformed", f"not msgpack: {type(e).__name__}") from None
    if not isinstance(obj, list) or len(obj) != 3:
        raise DecodeError("malformed", "envelope must be [version, type, body]")
    version, ctype, body = obj
    if isinstance(version, bool) or not isinstance(version, int):
        raise DecodeError("malformed", "version must be an integer")
    if version not in SUPPORTED_VERSIONS:
        raise DecodeError("unsupported_version", f"log version {version} is not supported")
    try:
        ct = CommandType(ctype)
    except ValueError:
        raise DecodeError("unknown_command", f"unknown command type {ctype!r}") from None
    cls = COMMAND_CLASSES[ct]
    spec = FIELD_TYPES[cls]
    if not isinstance(body, list) or len(body) != len(spec):
        raise DecodeError("malformed", f"{ct.name} body must have {len(spec)} fields")
    for value, (name, annotation) in zip(body, spec, strict=True):
        if not field_ok(value, annotation):
            raise DecodeError("malformed", f"{ct.name}.{name} must be {annotation}")
    cmd: Command = cls(*body)
    return cmd
