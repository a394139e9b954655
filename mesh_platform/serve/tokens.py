"""Issued tokens: the passwords ``mesh serve`` accepts for a principal, kept hashed.

An operator issues a token for a principal (``mesh token create team:campaigns``); the secret
is shown once and is the password of a PostgreSQL login whose user is that principal::

    mesh_<id>_<secret>      id: 12 hex characters, secret: 32 random bytes (base64url)

Only the SHA-256 of the whole string is kept, with the principal, when it was created, when it
expires and whether it was revoked. A 256-bit random secret needs no slow hash: nobody can
guess it from its digest, and a fast one keeps a login cheap. The file is JSON, its owner's
only (0600 in a 0700 folder), replaced atomically, and changed under an exclusive lock on a
sibling file, so two ``mesh token`` commands at once never lose a token. Nothing is written on
the read path (no "last used"): a login costs one ``stat`` when the file has not changed.

Every refusal of a login is the same :class:`AuthenticationError` ("password authentication
failed for user ..."), whatever went wrong: a client learns nothing about which tokens exist.
Why it was refused is on the exception (``reason``), for the server's audit log only.

The vocabulary of a proven login (:class:`Identity`) lives here too, at the bottom of the
package, so the OpenID Connect verifier and :mod:`mesh_platform.serve.identity` share it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mesh_platform.access.principals import PRINCIPALS_FILE, load_principals
from mesh_platform.config import PRIVATE_FILE_MODE, Mesh, make_private_dir
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import MeshError, printable_value
from mesh_platform.files import write_atomically
from mesh_platform.formats import parse_duration
from mesh_platform.products.descriptor_grants import normalise_principal

__all__ = [
    "AuthenticationError",
    "Identity",
    "TokenRecord",
    "TokenStore",
    "parse_expires",
    "token_store",
]

# mesh_<12 hex>_<43 base64url characters: token_urlsafe(32)>; the secret may hold '_' and '-'
TOKEN_PATTERN = re.compile(r"\Amesh_([0-9a-f]{12})_([A-Za-z0-9_-]{43})\Z", re.ASCII)
TOKEN_PREFIX = re.compile(r"\Amesh_([0-9a-f]{12})_", re.ASCII)
TOKEN_ID = re.compile(r"\A[0-9a-f]{12}\Z", re.ASCII)
FILE_VERSION = 1
# Compared against when the id is unknown, so an unknown id costs what a known one does
_NO_DIGEST = hashlib.sha256(b"no such token").hexdigest()


class AuthenticationError(MeshError):
    """A login was refused. The message is the same for every cause (PostgreSQL's own words);
    ``reason`` says which it was ("expired", "revoked", "unknown token", "wrong secret",
    "principal mismatch", "bad signature"...) and is for the server's audit log, never the
    client."""

    def __init__(self, user: str, reason: str) -> None:
        self.user = user
        self.reason = reason
        super().__init__(
            f"password authentication failed for user {printable_value(user)[:100]}",
            fix="log in as the principal the token was issued for, with the whole token as "
            "the password (`mesh token create`), or with a current JWT of the mesh's issuer",
        )


@dataclass(frozen=True)
class Identity:
    """Who a login proved to be.

    ``principal``: who queries run as; ``teams``: memberships an identity provider vouches for
    (OpenID Connect), resolved with the declared ones; ``token_id``: the issued token used;
    ``subject``: the identity provider's value of its principal claim, as it sent it;
    ``expires_at``: when the proof lapses (a JWT's ``exp``, seconds since the epoch), or None.
    """

    principal: str
    method: Literal["token", "oidc"]
    teams: tuple[str, ...] = ()
    token_id: str | None = None
    subject: str | None = None
    expires_at: float | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat()


@dataclass(frozen=True)
class TokenRecord:
    """One issued token as it is kept: never its secret, only the secret's SHA-256."""

    id: str
    principal: str
    sha256: str
    created: str
    expires: str | None
    revoked: str | None
    description: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenRecord:
        """A record of the file; ValueError when a field is missing or not what it must be."""
        record = cls(
            id=str(data["id"]),
            principal=str(data["principal"]),
            sha256=str(data["sha256"]),
            created=str(data["created"]),
            expires=data.get("expires"),
            revoked=data.get("revoked"),
            description=str(data.get("description") or ""),
        )
        for moment in (record.created, record.expires, record.revoked):
            if moment is not None and dt.datetime.fromisoformat(moment).tzinfo is None:
                raise ValueError(f"time {moment!r} has no time zone")
        return record

    def expired(self, now: dt.datetime | None = None) -> bool:
        if self.expires is None:
            return False
        return dt.datetime.fromisoformat(self.expires) <= (now or _now())

    def valid(self, now: dt.datetime | None = None) -> bool:
        """Neither revoked nor expired."""
        return self.revoked is None and not self.expired(now)


def parse_expires(text: str) -> dt.timedelta | None:
    """``--expires``: ``30d``, ``12h``, ``90m`` (any positive number and a unit s, m, h or d)
    or ``never`` (None). ValueError with the message to show otherwise."""
    if text.strip().lower() == "never":
        return None
    try:
        return parse_duration(text.strip(), command_line=True)
    except ValueError as exc:
        raise ValueError(f"{exc}, or 'never'") from None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The tokens file of a mesh.

    ``known``: whether a (normalised) principal exists now: checked when a token is issued and
    again at every login, since principals.yaml can change after a token was issued.
    """

    def __init__(self, path: Path, known: Callable[[str], bool]) -> None:
        self.path = Path(path)
        self.known = known
        self._cache: tuple[tuple[int, int, int], dict[str, TokenRecord]] | None = None

    # reading -------------------------------------------------------------------------------

    def _read(self) -> dict[str, TokenRecord]:
        """Every record, by id (re-read only when the file changed). MeshError when the file
        cannot be read or is not a tokens file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._cache = None
            return {}
        except OSError as exc:
            raise self._unreadable(exc) from exc
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            data = json.loads(self.path.read_text())
            records = {r["id"]: TokenRecord.from_json(r) for r in data["tokens"]}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self._unreadable(exc) from exc
        self._cache = (stamp, records)
        return records

    def _unreadable(self, exc: BaseException) -> MeshError:
        return MeshError(
            f"the tokens file cannot be read ({type(exc).__name__}: {exc})",
            fix="restore it from a backup, or remove it (every issued token stops working; "
            "issue new ones with `mesh token create`)",
            path=self.path,
        )

    def list(self) -> list[TokenRecord]:
        """Every token ever issued (revoked and expired ones included), oldest first."""
        return sorted(self._read().values(), key=lambda r: (r.created, r.id))

    def still_valid(self, token_id: str) -> bool:
        """Whether the token is neither revoked nor expired now: one ``stat`` while the file is
        unchanged, so a session can ask before each query. A file that cannot be read: False."""
        try:
            record = self._read().get(token_id)
        except MeshError:
            return False
        return record is not None and record.valid()

    # changing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, TokenRecord]]:
        """The records, read under an exclusive lock held until they are written back: a
        concurrent writer waits, then reads what this one wrote."""
        make_private_dir(self.path.parent)
        lock = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._cache = None  # read what the previous holder of the lock wrote
            yield dict(self._read())
        finally:
            os.close(fd)  # releases the lock

    def _write(self, records: dict[str, TokenRecord]) -> None:
        tokens = [asdict(r) for r in sorted(records.values(), key=lambda r: (r.created, r.id))]
        text = json.dumps({"version": FILE_VERSION, "tokens": tokens}, indent=2) + "\n"
        write_atomically(self.path, text, mode=PRIVATE_FILE_MODE)
        self._cache = None

    def create(
        self, principal: str, *, expires: dt.timedelta | None, description: str = ""
    ) -> tuple[str, TokenRecord]:
        """Issue a token for ``principal`` (a domain, ``team:<t>``, ``user:<u>``; ``domain:``
        dropped) valid for ``expires`` (None: until revoked). Returns the secret, to show once,
        and the record kept."""
        try:
            principal = normalise_principal(principal)
        except ValueError as exc:
            raise MeshError(str(exc), fix="name a domain, team:<t> or user:<u>") from None
        if not self.known(principal):
            raise MeshError(
                f"unknown principal '{principal}': no token issued",
                fix=f"use a domain or a principal declared in {PRINCIPALS_FILE}",
            )
        now = _now()
        with self._locked() as records:
            token_id = secrets.token_hex(6)
            while token_id in records:
                token_id = secrets.token_hex(6)
            token = f"mesh_{token_id}_{secrets.token_urlsafe(32)}"
            record = TokenRecord(
                id=token_id,
                principal=principal,
                sha256=_digest(token),
                created=_iso(now) or "",
                expires=_iso(now + expires) if expires is not None else None,
                revoked=None,
                description=" ".join(description.split()),
            )
            records[token_id] = record
            self._write(records)
        return token, record

    def revoke(self, token_id: str) -> TokenRecord:
        """Revoke a token: the next login and the next query of a session opened with it are
        refused. Revoking a revoked token keeps its first revocation time."""
        with self._locked() as records:
            record = records.get(token_id)
            if record is None:
                shown = token_id if TOKEN_ID.fullmatch(token_id) else printable_value(token_id)
                raise MeshError(
                    f"no token has the id '{shown[:40]}'",
                    fix="`mesh token list` shows the ids of the issued tokens",
                    path=self.path,
                )
            if record.revoked is None:
                record = replace(record, revoked=_iso(_now()))
                records[token_id] = record
                self._write(records)
        return record

    # logging in ----------------------------------------------------------------------------

    def verify(self, user: str, password: str) -> TokenRecord:
        """The record of the token ``password``, if it is valid and issued for ``user`` (the
        principal, ``domain:`` optional). AuthenticationError otherwise, the same for every
        cause, a tokens file or principals.yaml that cannot be read included (fail closed; the
        MeshError saying why is its ``__cause__``, for the server's log)."""
        match = TOKEN_PATTERN.fullmatch(password)
        if match is None:
            raise AuthenticationError(user, "malformed token")
        try:
            record = self._read().get(match.group(1))
        except MeshError as exc:
            raise AuthenticationError(user, "tokens file unreadable") from exc
        expected = record.sha256 if record is not None else _NO_DIGEST
        same = hmac.compare_digest(_digest(password), str(expected))
        if record is None:
            raise AuthenticationError(user, "unknown token")
        if not same:
            raise AuthenticationError(user, "wrong secret")
        if record.revoked is not None:
            raise AuthenticationError(user, "revoked")
        if record.expired():
            raise AuthenticationError(user, "expired")
        try:
            login = normalise_principal(user)
        except ValueError:
            login = None
        if login != record.principal:
            raise AuthenticationError(user, "principal mismatch")
        try:
            known = self.known(record.principal)
        except MeshError as exc:
            raise AuthenticationError(user, "principals unreadable") from exc
        if not known:
            raise AuthenticationError(user, "unknown principal")
        return record


def token_store(mesh: Mesh) -> TokenStore:
    """The mesh's tokens file (``serve.tokens_file``, relative to the mesh root; default
    ``<state>/serve/tokens.json``), its principals being those of principals.yaml and the
    domains, as they are when asked."""
    configured = mesh.settings.serve.tokens_file
    if configured is None:
        path = mesh.state_dir / "serve" / "tokens.json"
    else:
        path = configured if configured.is_absolute() else mesh.root / configured

    def known(principal: str) -> bool:
        domains = set(list_domain_names(mesh))
        return load_principals(mesh.root, domains).known(principal)

    return TokenStore(path, known)
