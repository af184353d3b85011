"""Storage: interfaces (interfaces.py) and their implementations.

The embedded default keeps accounts and the queue in SQLite (sqlite.py) and mail in
Maildir folders (maildir.py). A PostgreSQL backend will implement the same Protocols.
"""
