"""Principals of the mesh (who can read) and their clearances, from ``principals.yaml``.

A principal is a domain (``sales``: every folder of ``domains/`` is one, implicitly), a team
(``team:campaigns``) or a named user (``user:alice``). ``member_of`` makes a principal act with
the access of others (a user in a team, a team in a domain); ``clearances`` lift masking of
personal data: ``pii`` for every kind, ``pii:<kind>`` (``pii:phone``) for one::

    principals:
      - id: team:customer-care
        description: Calls customers back about their orders.
        member_of: [marketing]
        clearances: [pii:phone]
      - id: user:alice
        member_of: [team:customer-care]

The file is read on every access decision: a removed membership or clearance stops working on
the next query, without a rebuild.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mesh_platform.addressing import name_problem
from mesh_platform.errors import MeshError
from mesh_platform.formats import load_yaml_model
from mesh_platform.products.descriptor_columns import PII_KINDS
from mesh_platform.products.descriptor_grants import normalise_principal

PRINCIPALS_FILE = "principals.yaml"


class AccessDeniedError(MeshError):
    """A principal may not read a product (or is unknown)."""


def _clearance(value: str) -> str:
    if value == "pii" or (value.startswith("pii:") and value[4:] in PII_KINDS):
        return value
    raise ValueError(
        f"clearance {value!r} must be 'pii' (every kind) or 'pii:<kind>' with kind in "
        + ", ".join(sorted(PII_KINDS))
    )


class PrincipalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    description: str = ""
    member_of: list[str] = Field(default_factory=list)
    clearances: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return normalise_principal(value)

    @field_validator("member_of")
    @classmethod
    def _members(cls, values: list[str]) -> list[str]:
        return [normalise_principal(v) for v in values]

    @field_validator("clearances")
    @classmethod
    def _clearances(cls, values: list[str]) -> list[str]:
        return [_clearance(v) for v in values]


class PrincipalsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principals: list[PrincipalSpec] = Field(default_factory=list)


@dataclass(frozen=True)
class Principal:
    """A resolved principal: itself and every principal it acts as, and its clearances."""

    id: str
    acts_as: frozenset[str]
    clearances: frozenset[str]

    def cleared_for(self, classification: str | None) -> bool:
        if not classification or not classification.startswith("pii:"):
            return True
        return "pii" in self.clearances or classification in self.clearances

    def domain_member(self, domain: str) -> bool:
        return domain in self.acts_as


def _normalised_or_none(principal: str) -> str | None:
    try:
        return normalise_principal(principal)
    except ValueError:
        return None


class Principals:
    """The declared principals plus one per domain."""

    def __init__(self, specs: dict[str, PrincipalSpec], domains: set[str], path: Path) -> None:
        self.specs = specs
        # A folder of domains/ whose name breaks the naming rule is no principal (its domain
        # does not load either, with its own error): it must not make every access fail.
        self.domains = {d for d in domains if name_problem(d) is None}
        self.path = path

    def known(self, principal: str) -> bool:
        return principal in self.specs or principal in self.domains

    def resolve(self, principal: str, *, member_of: Iterable[str] = ()) -> Principal:
        """Resolve ``principal`` and its memberships (transitively); unknown ones are refused.

        ``member_of``: memberships an identity provider vouches for (an OpenID Connect token's
        teams), added to the declared ones; only declared principals count. A user the file
        does not declare is known through them."""
        try:
            principal = normalise_principal(principal)
        except ValueError as exc:
            raise AccessDeniedError(str(exc), fix="pass --as <principal>") from None
        vouched = [g for g in map(_normalised_or_none, member_of) if g and self.known(g)]
        if not self.known(principal) and not vouched:
            raise AccessDeniedError(
                f"unknown principal '{principal}'",
                fix=f"use a domain ({', '.join(sorted(self.domains))}) or a principal declared "
                f"in {self.path.name}",
                path=self.path,
            )
        seen: set[str] = set()
        clearances: set[str] = set()
        todo = [principal, *vouched]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            spec = self.specs.get(current)
            if spec is not None:
                clearances.update(spec.clearances)
                todo.extend(spec.member_of)
        return Principal(principal, frozenset(seen), frozenset(clearances))

    def problems(self) -> list[str]:
        """Memberships naming principals nobody declared."""
        return [
            f"principal '{spec.id}' is member_of unknown '{group}'"
            for spec in self.specs.values()
            for group in spec.member_of
            if not self.known(group)
        ]


_CACHE: dict[Path, tuple[tuple[int, int], dict[str, PrincipalSpec]]] = {}


def load_principals(root: Path, domains: set[str]) -> Principals:
    """The mesh's principals (re-read whenever the file changes)."""
    path = root / PRINCIPALS_FILE
    if not path.is_file():
        return Principals({}, domains, path)
    st = path.stat()
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == (st.st_mtime_ns, st.st_size):
        return Principals(cached[1], domains, path)
    parsed = load_yaml_model(
        path, PrincipalsFile, what=PRINCIPALS_FILE, empty={}, syntax_fix="fix its syntax",
        fix="each entry needs `id` (domain, team:<t>, user:<u>); optional description, "
        "member_of, clearances (pii, pii:<kind>)",
    )  # fmt: skip
    specs: dict[str, PrincipalSpec] = {}
    for spec in parsed.principals:
        if spec.id in specs:
            raise MeshError(
                f"{PRINCIPALS_FILE} declares principal '{spec.id}' twice",
                fix="merge the two entries",
                path=path,
            )
        specs[spec.id] = spec
    principals = Principals(specs, domains, path)
    if problems := principals.problems():
        raise MeshError(
            f"{PRINCIPALS_FILE}: " + "; ".join(problems),
            fix="declare the missing principal or remove the membership",
            path=path,
        )
    _CACHE[path] = ((st.st_mtime_ns, st.st_size), specs)
    return principals
