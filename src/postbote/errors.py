"""One error hierarchy for postbote.

    PostboteError
    ├── ConfigError            bad configuration: one line naming the key or file
    ├── StoreError             the account/queue store failed or was misused
    │   ├── NotFound           no such domain, user, alias or queue entry
    │   └── AlreadyExists      the object exists already
    ├── SpoolError             the durable spool could not take a message
    │   └── SpoolFull          disk full or quota reached: answer 452 4.3.1
    └── ProtocolError          a peer broke a protocol; carries the reply to send
        ├── LocalProtocolError   we were asked to do something illegal (a bug)
        └── RemoteProtocolError  the peer sent something illegal

Protocol cores raise ProtocolError subclasses; the asyncio glue turns them into
replies at the command boundary. Nothing here reveals configuration to a client.
"""

from __future__ import annotations


class PostboteError(Exception):
    """Base of every error postbote raises on purpose."""


class ConfigError(PostboteError):
    """The configuration is invalid. ``str(err)`` is one line naming the key or file."""


class StoreError(PostboteError):
    """The store failed or an operation on it is invalid."""


class NotFound(StoreError):
    """The object asked for does not exist."""


class AlreadyExists(StoreError):
    """The object to be created exists already."""


class SpoolError(PostboteError):
    """The spool could not durably store a message (answer 451 4.3.0)."""


class SpoolFull(SpoolError):
    """No space left for the message (answer 452 4.3.1)."""


class ProtocolError(PostboteError):
    """A protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """Our side attempted something the protocol state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
