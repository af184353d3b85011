"""The envelope: what SMTP said about a message besides its content.

It travels with the body from the SMTP session through the spool to delivery, and is
serialised as JSON inside spool records and queue rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Recipient:
    """One forward-path with its RFC 3461 DSN parameters."""

    address: str  # canonical text form, e.g. 'user@example.org'
    notify: tuple[str, ...] | None = None  # ("NEVER",) or subset of SUCCESS/FAILURE/DELAY
    orcpt: str | None = None  # "addr-type;address", xtext-decoded (RFC 3461 §4.2)


@dataclass(frozen=True, slots=True)
class Envelope:
    """Sender, recipients and the transaction parameters of one accepted message."""

    id: str  # spool/queue id, unique across restarts and nodes
    sender: str  # "" for the null reverse-path <>
    recipients: tuple[Recipient, ...]
    received_at: float  # UNIX time of acceptance
    body_type: str | None = None  # "7BIT" | "8BITMIME" | None (RFC 6152)
    smtputf8: bool = False  # RFC 6531
    ret: str | None = None  # "FULL" | "HDRS" (RFC 3461 §4.3)
    envid: str | None = None  # RFC 3461 §4.4, xtext-decoded
    client_ip: str = ""
    helo: str = ""
    tls: bool = False
    auth: str | None = None  # authenticated identity, if any
    extra: dict[str, str] = field(default_factory=dict)
    # The JSON form, made once: the spool, the delivery worker's frame and the queue all
    # need it. Not part of the value (compare=False), never serialised.
    _json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def to_json(self) -> bytes:
        if self._json is not None:
            return self._json
        # By hand rather than dataclasses.asdict(): this runs for every message, and
        # asdict deep-copies every field (~15x slower).
        data = {f: getattr(self, f) for f in _FIELDS}
        data["recipients"] = [
            {"address": r.address, "notify": r.notify, "orcpt": r.orcpt} for r in self.recipients
        ]
        out = _ENCODER.encode(data).encode()
        object.__setattr__(self, "_json", out)  # frozen: a cache, not a change of value
        return out

    @classmethod
    def from_json(cls, data: bytes | str) -> Envelope:
        raw: dict[str, Any] = json.loads(data)
        rcpts = tuple(
            Recipient(
                address=r["address"],
                notify=tuple(r["notify"]) if r.get("notify") is not None else None,
                orcpt=r.get("orcpt"),
            )
            for r in raw.pop("recipients")
        )
        return cls(recipients=rcpts, **raw)


_FIELDS = tuple(f.name for f in fields(Envelope) if f.init)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
