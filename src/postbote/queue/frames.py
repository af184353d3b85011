"""The framing between the server process and its delivery worker (queue/worker.py).

Every frame is a u32 little-endian length followed by that many bytes; the first byte
of the payload says what it is:

    server → worker   M <fresh: 0|1> <u32 envelope length> <envelope JSON> <body>
    worker → server   R                         ready (the worker opened its stores)
                      D <id>\\n<id>...           these messages are delivered (durable)
                      F <id>\\n<id>...           these failed; retry later
                      Q                         something went into the outbound queue
"""

from __future__ import annotations

import struct

from postbote.envelope import Envelope
from postbote.spool import SpooledMessage

LENGTH = struct.Struct("<I")
MAX_FRAME = 1 << 31


def frame(payload: bytes) -> bytes:
    return LENGTH.pack(len(payload)) + payload


def encode_message(message: SpooledMessage, fresh: bool) -> bytes:
    env = message.envelope.to_json()
    return frame(b"M" + (b"1" if fresh else b"0") + LENGTH.pack(len(env)) + env + message.body)


def decode_message(payload: bytes) -> tuple[SpooledMessage, bool]:
    if payload[:1] != b"M" or len(payload) < 6:
        raise ValueError("not a message frame")
    fresh = payload[1:2] == b"1"
    (n,) = LENGTH.unpack_from(payload, 2)
    env = Envelope.from_json(payload[6 : 6 + n])
    return SpooledMessage(env, payload[6 + n :]), fresh


def encode_ids(kind: bytes, ids: list[str]) -> bytes:
    return frame(kind + "\n".join(ids).encode())


def decode_ids(payload: bytes) -> list[str]:
    return payload[1:].decode().split("\n") if len(payload) > 1 else []


def split_frames(buf: bytearray) -> list[bytes]:
    """Remove and return every complete frame at the start of ``buf``."""
    out: list[bytes] = []
    pos = 0
    while len(buf) - pos >= 4:
        (n,) = LENGTH.unpack_from(buf, pos)
        if n >= MAX_FRAME:
            raise ValueError("frame too large")
        if len(buf) - pos - 4 < n:
            break
        out.append(bytes(buf[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    del buf[:pos]
    return out
