"""Session commands a PostgreSQL client sends, answered from the client's own settings.

Drivers and tools set and read a few settings on connect (``SET application_name``, ``SHOW
transaction isolation level``, ``SET statement_timeout``) and wrap queries in transactions. The
service is read-only and each query reads one pinned snapshot per product, so a transaction
changes nothing: ``BEGIN``/``COMMIT``/``ROLLBACK`` are acknowledged and tracked (the
transaction status a client sees is PostgreSQL's). Settings are an allowlist: an unknown one is
refused as PostgreSQL refuses it; ``statement_timeout`` shortens the principal's own timeout,
never lengthens it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mesh_platform.errors import MeshError

SERVER_VERSION = "16.0"
# what the service reports at login (ParameterStatus), as PostgreSQL 16 does
REPORTED = {
    "server_version": SERVER_VERSION,
    "server_encoding": "UTF8",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "iso_8601",
    "TimeZone": "UTC",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
    "is_superuser": "off",
}
# settings a client may change, with the values it may choose (None: any)
SETTABLE: dict[str, frozenset[str] | None] = {
    "application_name": None,
    "statement_timeout": None,
    "mesh.at": None,  # time travel: a snapshot id or an ISO time (mesh query --at)
    "search_path": None,
    "extra_float_digits": None,
    "client_min_messages": None,
    "lock_timeout": None,
    "idle_in_transaction_session_timeout": None,
    "client_encoding": frozenset({"utf8", "unicode"}),
    "datestyle": frozenset({"iso, mdy", "iso", "iso,mdy"}),
    "timezone": frozenset({"utc", "etc/utc", "gmt", "z", "+00", "0"}),
    "standard_conforming_strings": frozenset({"on", "true"}),
    "intervalstyle": frozenset({"iso_8601"}),
    "default_transaction_read_only": frozenset({"on", "true"}),
    "transaction_read_only": frozenset({"on", "true"}),
}
_SET = re.compile(
    r"\A\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_.]*|TIME\s+ZONE)"
    r"\s*(?:=|\s+TO\s+|\s+)\s*(?P<value>.*?)\s*\Z",
    re.IGNORECASE | re.DOTALL,
)
_SHOW = re.compile(r"\A\s*SHOW\s+(?P<name>[A-Za-z_][A-Za-z0-9_. ]*?)\s*\Z", re.IGNORECASE)
_RESET = re.compile(r"\A\s*RESET\s+(?P<name>ALL|[A-Za-z_][A-Za-z0-9_.]*)\s*\Z", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}


class SettingError(MeshError):
    """A client asked for a setting the service does not have or a value it cannot use."""


@dataclass(frozen=True)
class Answer:
    tag: str  # the CommandComplete tag
    show: tuple[str, str] | None = None  # SHOW: (column, value)
    transaction: str | None = None  # the new transaction status: I, T (None: unchanged)


def timeout_seconds(value: str) -> float | None:
    """``statement_timeout``: milliseconds, or a number with a unit (5s, 1min); 0: none."""
    text = value.strip().strip("'\"").lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|h)?", text)
    if not match:
        raise SettingError(
            f"invalid value for statement_timeout: {value[:40]!r}",
            fix="use milliseconds (SET statement_timeout = 5000) or a unit (5s, 1min)",
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "ms"]
    return seconds or None


class Settings:
    """One client's settings (what ``SHOW`` reads back)."""

    def __init__(self, application: str) -> None:
        self.values = {k.lower(): v for k, v in REPORTED.items()}
        self.values.update(
            application_name=application,
            statement_timeout="0",
            search_path='"$user", public',
            transaction_isolation="read committed",
            transaction_read_only="on",
            default_transaction_read_only="on",
            max_identifier_length="63",
            server_version_num="160000",
        )
        self.values["mesh.at"] = ""

    @property
    def timeout(self) -> float | None:
        return timeout_seconds(self.values["statement_timeout"])

    def run(self, word: str, text: str, transaction: str) -> Answer:
        if word in {"BEGIN", "START"}:
            return Answer("BEGIN", transaction="T")
        if word in {"COMMIT", "END"}:
            return Answer("ROLLBACK" if transaction == "E" else "COMMIT", transaction="I")
        if word in {"ROLLBACK", "ABORT"}:
            if re.match(r"\A\s*ROLLBACK\s+(WORK\s+|TRANSACTION\s+)?TO\b", text, re.I):
                return Answer("ROLLBACK", transaction="T")  # to a savepoint: still in it
            return Answer("ROLLBACK", transaction="I")
        if word in {"SAVEPOINT", "RELEASE"}:
            return Answer(word)  # nothing to undo in a read-only session
        if word == "DISCARD":
            self.__init__(self.values["application_name"])  # type: ignore[misc]
            return Answer("DISCARD ALL")
        if word == "DEALLOCATE":
            return Answer("DEALLOCATE")  # the connection drops its prepared statement
        if word == "SHOW":
            return self._show(text)
        if word == "RESET":
            return self._reset(text)
        return self._set(text)

    def _set(self, text: str) -> Answer:
        if re.match(r"\A\s*SET\s+(SESSION\s+CHARACTERISTICS|TRANSACTION)\b", text, re.I):
            return Answer("SET")  # isolation of a read-only service: every level is the same
        match = _SET.match(text)
        if not match:
            raise SettingError("cannot read this SET statement", fix="SET name = value")
        name = re.sub(r"\s+", "", match.group("name")).lower()
        name = {"timezone": "timezone", "names": "client_encoding"}.get(name, name)
        value = match.group("value").strip().strip("'\"")
        if name not in SETTABLE:
            raise SettingError(
                f'unrecognized configuration parameter "{name[:63]}"',
                fix="the service keeps: " + ", ".join(sorted(SETTABLE)),
            )
        allowed = SETTABLE[name]
        if allowed is not None and value.lower() not in allowed:
            raise SettingError(
                f"{name} cannot be {value[:40]!r} on this service",
                fix=f"it can be: {', '.join(sorted(allowed))}",
            )
        if name == "statement_timeout":
            timeout_seconds(value)
        self.values[name] = value
        return Answer("SET")

    def _show(self, text: str) -> Answer:
        match = _SHOW.match(text)
        name = re.sub(r"\s+", " ", match.group("name")).lower() if match else ""
        name = {"transaction isolation level": "transaction_isolation"}.get(name, name)
        if name == "all" or name not in self.values:
            raise SettingError(
                f'unrecognized configuration parameter "{name[:63]}"',
                fix="SHOW one of: " + ", ".join(sorted(self.values)),
            )
        return Answer("SHOW", show=(name, self.values[name]))

    def _reset(self, text: str) -> Answer:
        match = _RESET.match(text)
        name = match.group("name").lower() if match else ""
        fresh = Settings(self.values["application_name"])
        if name == "all":
            self.values = fresh.values
        elif name in fresh.values:
            self.values[name] = fresh.values[name]
        else:
            raise SettingError(f'unrecognized configuration parameter "{name[:63]}"', fix="")
        return Answer("RESET")
