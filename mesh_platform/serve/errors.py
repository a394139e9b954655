"""Errors as PostgreSQL reports them: a SQLSTATE code a client can act on, the message, and the
fix as the hint (the ``H`` field psql prints as ``HINT:``).

A refusal says what was refused and why, never more than the caller may know: a failed login
is one message for every cause (the cause goes to the audit log only).
"""

from __future__ import annotations

from mesh_platform.access.principals import AccessDeniedError
from mesh_platform.errors import MeshError, one_line
from mesh_platform.query.engine import (
    QueryCancelledError,
    QueryFailedError,
    QueryLimitError,
    UnreadableDataError,
)
from mesh_platform.query.sql import QueryRefusedError
from mesh_platform.serve.commands import SettingError
from mesh_platform.serve.identity import AuthenticationError


class ProtocolViolation(Exception):
    """A client broke the protocol (or asked for what the service does not do). ``fatal``: the
    session ends after the error is sent."""

    def __init__(self, message: str, *, code: str = "08P01", fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


class LoginRefusedError(MeshError):
    """A login refused before its credential is checked (rate limit, TLS required)."""

    code = "28000"


# SQLSTATE of each kind of error (PostgreSQL's Appendix A); the first match wins
_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (AuthenticationError, "28P01"),
    (LoginRefusedError, "28000"),
    (AccessDeniedError, "42501"),  # insufficient_privilege
    (QueryRefusedError, "42601"),  # syntax_error_or_access_rule_violation: refused SQL
    (QueryCancelledError, "57014"),  # query_canceled
    (SettingError, "42704"),  # undefined_object
    (UnreadableDataError, "58030"),  # io_error
    (QueryFailedError, "42000"),  # the user's SQL failed in the engine
)


def sqlstate(exc: BaseException) -> str:
    if isinstance(exc, ProtocolViolation):
        return exc.code
    if isinstance(exc, QueryLimitError):  # timeout: query_canceled; too many rows: limit
        return "57014" if "longer than" in exc.what else "54000"
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return "XX000"  # internal_error


def error_fields(exc: BaseException, *, fatal: bool = False) -> dict[str, str]:
    """The fields of an ErrorResponse for ``exc``."""
    fatal = fatal or getattr(exc, "fatal", False) or isinstance(exc, AuthenticationError)
    severity = "FATAL" if fatal else "ERROR"
    fields = {"S": severity, "V": severity, "C": sqlstate(exc)}
    if isinstance(exc, MeshError):
        fields["M"] = one_line(exc.what)[:2000]
        if exc.fix:
            fields["H"] = one_line(exc.fix)[:2000]
    elif isinstance(exc, ProtocolViolation):
        fields["M"] = one_line(str(exc))[:2000]
    else:
        fields["M"] = "internal error of the query service"
        fields["H"] = "retry; if it persists, report it with the time to the platform team"
    return fields
