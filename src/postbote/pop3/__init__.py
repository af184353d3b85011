"""POP3: the sans-IO protocol core (protocol.py, events.py, responses.py) and its asyncio
glue (server.py). The core never touches sockets, clocks, disks or mailboxes: the glue
gives it a mailbox snapshot at login and message bytes on request."""
