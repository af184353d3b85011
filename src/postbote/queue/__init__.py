"""The queue: what happens to a message after the spool acknowledged it — local
delivery into Maildir (local.py) and, for remote recipients, the outbound queue."""
