"""OpenID Connect: a JWT of the mesh's identity provider as the password of a login.

A token is accepted only when all of this holds (``serve.oidc`` in mesh.yaml):

- its header's ``alg`` is one of ``algorithms`` (asymmetric only: ``none`` and ``HS*`` are
  refused before any key is looked at, so a public key can never be used as an HMAC secret);
- its ``kid`` names a signing key of the issuer's JWKS (a file, or an ``https://`` URL fetched
  with a 5 s timeout and cached; a ``kid`` not in the cached set refetches it, at most every
  30 s), and that key verifies the signature with the algorithm the key is bound to (its JWK's
  ``alg``, else its type's default: RSA RS256, P-256 ES256, Ed25519 EdDSA);
- it carries ``exp``, ``iss`` and ``aud``; ``iss`` is ``issuer``, ``aud`` holds ``audience``;
  ``exp`` (and ``nbf``, ``iat`` when present) hold, give or take ``leeway_seconds``.

Its claims then name a principal (``principal_prefix`` + the ``principal_claim``) and teams
(``team_prefix`` + each string of the ``teams_claim`` list). A principal's name is lower case
(``[a-z][a-z0-9_.-]*``); a claim value becomes one by :func:`claim_name`, a mapping that never
gives two identities the same name:

- an email address is lower-cased and its ``@`` written ``_at_``: ``Carol@Example.com`` ->
  ``user:carol_at_example.com``. The domain is kept on purpose: an issuer may vouch for
  addresses of domains the mesh does not own (a public identity provider signs tokens for any
  of its accounts), and ``carol@gmail.com`` must not become the ``user:carol`` of
  ``carol@example.com``. A domain never holds ``_``, so the last ``_at_`` is always the ``@``;
- any other value is taken as it is when it already is a valid name (``carol``, ``c.smith``),
  never lower-cased (a subject is case-sensitive) and never holding ``_at_``;
- anything else (``+`` in an address, an upper-case or numeric subject, too long) is no name:
  a principal claim without one refuses the login, a team without one is left out (fail
  closed: fewer memberships, never someone else's).

Every refusal is :class:`~mesh_platform.serve.tokens.AuthenticationError`, its ``reason`` one
of "algorithm not allowed", "unknown key", "keys unavailable", "bad signature", "expired",
"not yet valid", "wrong audience", "wrong issuer", "malformed", "unmappable principal".
"""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt

from mesh_platform.addressing import EMAIL_PATTERN, MAX_NAME_LENGTH, PRINCIPAL_NAME_PATTERN
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor_grants import normalise_principal
from mesh_platform.serve.tokens import AuthenticationError, Identity
from mesh_platform.settings import OidcSettings

__all__ = ["claim_name", "claim_principal", "load_jwks", "verify_jwt"]

JWKS_TIMEOUT_SECONDS = 5
JWKS_LIFESPAN_SECONDS = 300
REQUIRED_CLAIMS = ["exp", "iss", "aud"]
_EMAIL_AT = "_at_"

_files: dict[Path, tuple[tuple[int, int, int], jwt.PyJWKSet]] = {}
_clients: dict[str, jwt.PyJWKClient] = {}
_lock = threading.Lock()


def claim_name(value: object) -> str | None:
    """The principal name a claim value maps to (see the module's docstring), or None."""
    if not isinstance(value, str):
        return None
    if EMAIL_PATTERN.fullmatch(value):
        local, _, domain = value.lower().rpartition("@")
        name = f"{local}{_EMAIL_AT}{domain}"
    elif _EMAIL_AT in value:
        return None  # it would read as an address's name
    else:
        name = value
    if len(name) > MAX_NAME_LENGTH or not PRINCIPAL_NAME_PATTERN.fullmatch(name):
        return None
    return name


def claim_principal(value: object, prefix: str) -> str | None:
    """``prefix`` + the name of ``value``, normalised; None when it makes no valid principal."""
    name = claim_name(value)
    if name is None:
        return None
    try:
        return normalise_principal(prefix + name)
    except ValueError:
        return None


def _is_loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _jwks_error(settings: OidcSettings, why: str, root: Path) -> MeshError:
    where = settings.jwks if "://" in settings.jwks else root / settings.jwks
    return MeshError(
        f"the OpenID Connect keys (serve.oidc.jwks: {where}) {why}",
        fix="point serve.oidc.jwks in mesh.yaml at the issuer's JWKS: a JSON file "
        '({"keys": [...]}, relative to the mesh root) or an https:// URL',
        path=root / "mesh.yaml",
    )


def _client(settings: OidcSettings, root: Path) -> jwt.PyJWKClient:
    url = settings.jwks
    if not (url.startswith("https://") or _is_loopback_http(url)):
        raise _jwks_error(settings, "must be https:// (plain http only on loopback)", root)
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = jwt.PyJWKClient(
                url, timeout=JWKS_TIMEOUT_SECONDS, lifespan=JWKS_LIFESPAN_SECONDS
            )
            _clients[url] = client
    return client


def load_jwks(settings: OidcSettings, root: Path) -> jwt.PyJWKSet:
    """The issuer's keys (a file re-read when it changes; a URL fetched, cached 5 minutes).
    MeshError naming the setting when they cannot be had: ``mesh serve`` can call it at start."""
    if "://" in settings.jwks:
        try:
            return _client(settings, root).get_jwk_set()
        except jwt.PyJWTError as exc:
            raise _jwks_error(settings, f"cannot be fetched ({exc})", root) from exc
    path = Path(settings.jwks)
    path = path if path.is_absolute() else root / path
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = _files.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = jwt.PyJWKSet.from_json(path.read_text())
    except (OSError, ValueError, TypeError, AttributeError, jwt.PyJWTError) as exc:
        raise _jwks_error(settings, f"cannot be read ({type(exc).__name__}: {exc})", root) from exc
    with _lock:
        _files[path] = (stamp, keys)
    return keys


def _signing_key(settings: OidcSettings, root: Path, kid: object) -> jwt.PyJWK | None:
    """The signing key ``kid`` names (a token without ``kid``: the only signing key, if the
    set holds one); never a symmetric key."""
    if "://" in settings.jwks and isinstance(kid, str):
        try:  # the client refetches the set once for a kid it does not know (key rotation)
            key = _client(settings, root).get_signing_key(kid)
        except (jwt.PyJWKClientConnectionError, jwt.PyJWKSetError) as exc:
            raise _jwks_error(settings, f"cannot be fetched ({exc})", root) from exc
        except jwt.PyJWTError:  # no signing key has that kid, even after a refetch
            return None
        return key if key.key_type != "oct" else None
    candidates = [
        k
        for k in load_jwks(settings, root)
        if k.public_key_use in ("sig", None) and k.key_type != "oct"
    ]
    if kid is None:
        return candidates[0] if len(candidates) == 1 else None
    return next((k for k in candidates if k.key_id == kid), None)


_REASONS: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not yet valid"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidKeyError, "unknown key"),
]


def _reason(exc: jwt.PyJWTError) -> str:
    return next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "malformed")


def _claims(token: str, settings: OidcSettings, root: Path, user: str) -> dict[str, Any]:
    """The verified claims of ``token``; AuthenticationError (``user`` named) otherwise."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthenticationError(user, "malformed") from None
    if header.get("alg") not in settings.algorithms:
        raise AuthenticationError(user, "algorithm not allowed")
    try:
        key = _signing_key(settings, root, header.get("kid"))
    except MeshError as exc:  # the cause stays on the error, for the server's log
        raise AuthenticationError(user, "keys unavailable") from exc
    if key is None:
        raise AuthenticationError(user, "unknown key")
    try:
        return jwt.decode(
            token,
            key=key,
            algorithms=list(settings.algorithms),
            audience=settings.audience,
            issuer=settings.issuer,
            leeway=settings.leeway_seconds,
            options={"require": REQUIRED_CLAIMS, "verify_signature": True},
        )
    except jwt.PyJWTError as exc:
        raise AuthenticationError(user, _reason(exc)) from None
    except (ValueError, TypeError):  # a claim of the wrong type the library did not wrap
        raise AuthenticationError(user, "malformed") from None


def verify_jwt(
    token: str, settings: OidcSettings, *, root: Path, user: str | None = None
) -> Identity:
    """The identity ``token`` proves (see the module's docstring for what is checked and how
    claims map to principals). ``user``: the login's user, named in the refusal.

    Fetching a JWKS URL blocks (at most 5 s, then once per 5 minutes): call it off an event
    loop."""
    shown = user if user is not None else "?"
    claims = _claims(token, settings, root, shown)
    raw = claims.get(settings.principal_claim)
    principal = claim_principal(raw, settings.principal_prefix)
    if principal is None:
        raise AuthenticationError(shown, "unmappable principal")
    teams: list[str] = []
    groups = claims.get(settings.teams_claim) if settings.teams_claim else None
    for group in groups if isinstance(groups, list) else []:
        team = claim_principal(group, settings.team_prefix)
        if team is not None and team not in teams:
            teams.append(team)
    exp = claims["exp"]
    return Identity(
        principal=principal,
        method="oidc",
        teams=tuple(teams),
        subject=str(raw),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )
