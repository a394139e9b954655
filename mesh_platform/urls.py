"""Database URLs as SQLAlchemy (and so Dagster and pyiceberg) reads them: their secrets, and how
to show or use one without leaking its password. The settings (:mod:`mesh_platform.config`)
refuse a password in ``mesh.yaml``; errors and ``mesh doctor`` show URLs redacted.
"""

from __future__ import annotations

from typing import Any

from mesh_platform.errors import MeshConfigError


def parse_url(url: str) -> Any:
    """The URL as SQLAlchemy (and so Dagster and pyiceberg) reads it: a password may hold
    '/', '#' or '?' unencoded, which urllib would split on. Errors never quote the URL."""
    from sqlalchemy.engine import make_url  # heavy: SQLAlchemy (~0.4 s), only for URLs

    try:
        return make_url(url)
    except Exception:
        raise MeshConfigError(
            "a database URL of the profile cannot be parsed (not shown: it may hold a password)",
            fix="write it as postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DATABASE, with "
            "special characters of the password percent-encoded",
        ) from None


def pg_connect_args(url: str) -> dict[str, Any]:
    """psycopg2.connect keyword arguments of a SQLAlchemy PostgreSQL URL."""
    parsed = parse_url(url)
    args = parsed.translate_connect_args(username="user", database="dbname")
    args.update({k: v for k, v in parsed.query.items() if isinstance(v, str)})
    return args


def url_secrets(url: str) -> list[str]:
    """The secrets a URL holds (its password, a password query parameter)."""
    try:
        parsed = parse_url(url)
    except MeshConfigError:
        return []
    found = [parsed.password, parsed.query.get("password")]
    return [str(s) for s in found if s]


def redact(url: str) -> str:
    """A URL with its password (and any password parameter) replaced by ***."""
    if "://" not in url:
        return url
    try:
        parsed = parse_url(url)
    except MeshConfigError:
        return "<unparsable URL>"
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)
