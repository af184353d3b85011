"""SMTP: the sans-IO protocol core (protocol.py, grammar.py, replies.py, events.py)
and its asyncio glue (server.py). The core never touches sockets, clocks or disks."""
