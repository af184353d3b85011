"""postbote: a complete mail server in Python.

SMTP for incoming mail, submission for users' clients, a durable spool and queue,
local Maildir delivery, and (in later releases) POP3, IMAP and mail authentication.
"""

__version__ = "0.1.0"
