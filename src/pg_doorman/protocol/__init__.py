"""Sans-I/O PostgreSQL wire protocol: framing, message builders and parsers, SQLSTATE errors.

Nothing in this package touches sockets, pools or configuration: every function takes and returns bytes or small
values, so it can be unit-tested with byte strings.
"""
