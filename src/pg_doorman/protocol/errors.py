"""SQLSTATE codes the pooler emits and the exception hierarchy that carries them to the client."""

from __future__ import annotations

# Class 08 — connection exception
CONNECTION_FAILURE = "08006"
PROTOCOL_VIOLATION = "08P01"
# Class 0A — feature not supported
FEATURE_NOT_SUPPORTED = "0A000"
# Class 26 — invalid SQL statement name
INVALID_SQL_STATEMENT_NAME = "26000"
# Class 28 — invalid authorization specification
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
# Class 3D — invalid catalog name
INVALID_CATALOG_NAME = "3D000"
# Class 53 — insufficient resources
INSUFFICIENT_RESOURCES = "53000"
OUT_OF_MEMORY = "53200"
TOO_MANY_CONNECTIONS = "53300"
PROGRAM_LIMIT_EXCEEDED = "54000"
# Class 57 — operator intervention
QUERY_CANCELED = "57014"
ADMIN_SHUTDOWN = "57P01"
CANNOT_CONNECT_NOW = "57P03"
# Class 58 — system error
SYSTEM_ERROR = "58000"
POOLER_SHUTDOWN = "58006"
# Class XX — internal error
INTERNAL_ERROR = "XX000"


class PoolerError(Exception):
    """An error that is reported to the client as an ErrorResponse with ``sqlstate``.

    ``fatal`` errors close the client connection after the ErrorResponse; non-fatal ones are followed by
    ReadyForQuery and the session goes on.
    """

    def __init__(self, sqlstate: str, message: str, *, detail: str | None = None, fatal: bool = True) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail
        self.fatal = fatal


class ProtocolViolation(PoolerError):
    """The peer sent bytes that are not valid PostgreSQL protocol."""

    def __init__(self, message: str) -> None:
        super().__init__(PROTOCOL_VIOLATION, message)


class ServerError(PoolerError):
    """PostgreSQL answered with an ErrorResponse during login or a pooler-issued command."""

    def __init__(self, sqlstate: str, message: str, *, severity: str = "FATAL", detail: str | None = None) -> None:
        super().__init__(sqlstate, message, detail=detail)
        self.severity = severity
