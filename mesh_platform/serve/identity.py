"""Who a login of ``mesh serve`` is: the user and password of a PostgreSQL startup, checked.

The password says how the user proves who they are:

- ``mesh_<12 hex>_...``: a token issued by ``mesh token create`` (:mod:`.tokens`); the user
  must be the principal it was issued for (``sales`` or ``domain:sales``, ``team:campaigns``);
- three base64url segments (a JWT), when ``serve.oidc`` is configured: a token of the mesh's
  identity provider (:mod:`.oidc`); the user must be the principal its claims map to
  (``user:carol_at_example.com``) or the claim's value as the provider sent it
  (``carol@example.com``);
- anything else is refused: the service knows no other passwords.

A principal the mesh does not know is refused at login: an issued token's principal must
still be a domain or declared in principals.yaml (the file may have changed since the token was
issued); an identity provider's user must be declared, or be a member of a declared team.

A session asks :meth:`Authenticator.still_valid` before each query, so a revoked or expired
token (or a lapsed JWT) stops working on the next query, not the next login. Whether the
principal may read a product is decided by the query engine, as for ``mesh query``.
"""

from __future__ import annotations

import re
import time

from mesh_platform.access.principals import load_principals
from mesh_platform.config import Mesh
from mesh_platform.domain import list_domain_names
from mesh_platform.errors import MeshError
from mesh_platform.products.descriptor_grants import normalise_principal
from mesh_platform.serve.oidc import verify_jwt
from mesh_platform.serve.tokens import (
    TOKEN_PREFIX,
    AuthenticationError,
    Identity,
    TokenStore,
    token_store,
)

__all__ = ["AuthenticationError", "Authenticator", "Identity"]

JWT_PATTERN = re.compile(r"\A[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z", re.ASCII)


def _normalised(user: str) -> str | None:
    try:
        return normalise_principal(user)
    except ValueError:
        return None


class Authenticator:
    """Checks the logins of one mesh (its tokens file and its ``serve.oidc`` settings)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.tokens: TokenStore = token_store(mesh)

    def authenticate(self, user: str, password: str) -> Identity:
        """The identity ``user`` proves with ``password``; AuthenticationError otherwise (one
        message for every cause, the cause in its ``reason``). May block on the identity
        provider's keys (at most 5 s): call it off an event loop."""
        if TOKEN_PREFIX.match(password):
            record = self.tokens.verify(user, password)
            return Identity(principal=record.principal, method="token", token_id=record.id)
        oidc = self.mesh.settings.serve.oidc
        if not JWT_PATTERN.fullmatch(password):
            raise AuthenticationError(user, "not a token")
        if oidc is None:
            raise AuthenticationError(user, "oidc not configured")
        identity = verify_jwt(password, oidc, root=self.mesh.root, user=user)
        if user != identity.subject and _normalised(user) != identity.principal:
            raise AuthenticationError(user, "principal mismatch")
        try:
            principals = load_principals(self.mesh.root, set(list_domain_names(self.mesh)))
        except MeshError as exc:
            raise AuthenticationError(user, "principals unreadable") from exc
        if not any(map(principals.known, (identity.principal, *identity.teams))):
            raise AuthenticationError(user, "unknown principal")
        return identity

    def still_valid(self, identity: Identity, *, now: float | None = None) -> bool:
        """Whether the proof of ``identity`` still holds: its token neither revoked nor
        expired (one ``stat`` of the tokens file while it is unchanged), its JWT not past
        ``exp`` (and the leeway)."""
        if identity.method == "token":
            return identity.token_id is not None and self.tokens.still_valid(identity.token_id)
        if identity.expires_at is None:
            return False
        oidc = self.mesh.settings.serve.oidc
        leeway = oidc.leeway_seconds if oidc is not None else 0
        return (time.time() if now is None else now) < identity.expires_at + leeway
