"""Policies over what a domain declares beyond one descriptor's own rules: a value a person has
not written yet (a ``TODO(mesh):`` marker), a grant whose date has passed, an owner team nobody
declared, a domain that publishes nothing.

``TODO(mesh): ...`` at the start of a YAML string value marks what only a person can decide
(a purpose, a grant, a description): the scaffold and ``mesh adopt`` write them. Until each is
filled the domain does not deploy (``scaffold_todos``, an error like every policy by default),
and ``mesh check`` names the file and line of each. The others are warnings: an expired grant
denies nothing more than no grant does (its consumer's check blocks on it), an undeclared owner
team and an empty domain are loose ends a council wants to see, not reasons to stop a build.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from mesh_platform.access.principals import load_principals
from mesh_platform.domain import DOMAIN_FILE, parse_domain_spec
from mesh_platform.errors import MeshError
from mesh_platform.formats import Step, YamlLines
from mesh_platform.governance.policy import Policy, PolicyContext, Violation, register_policy
from mesh_platform.products.descriptor import ProductDescriptor
from mesh_platform.products.descriptor_lines import (
    TODO_MARKER,
    descriptor_source,
    did_you_mean,
    file_lines,
)

_NOT_SOURCES = frozenset({"target", "dbt_packages", "logs", "__pycache__"})


def _yaml_files(ctx: PolicyContext) -> Iterator[tuple[str, Path]]:
    """(path shown, path) of every YAML file of the domain: its dbt project's and its own."""
    if ctx.mesh is None:
        return
    for root in (ctx.mesh.dbt_projects_dir / ctx.domain, ctx.mesh.domains_dir / ctx.domain):
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in _NOT_SOURCES and not d.startswith("."))
            for name in sorted(f for f in files if f.endswith((".yml", ".yaml"))):
                path = Path(folder, name)
                yield str(path.relative_to(ctx.mesh.root)), path


def _path_name(lines: YamlLines, path: tuple[Step, ...]) -> str:
    """A YAML path as people name it: list items by their name (``models[orders].config``)."""
    shown = ""
    for depth, step in enumerate(path):
        if isinstance(step, int):
            item = lines.find(path[: depth + 1])
            label = next(
                (found[1].value for key in ("name", "to", "v")
                 if (found := lines.child(item, key)) and hasattr(found[1], "value")
                 and isinstance(found[1].value, str)),
                str(step),
            )  # fmt: skip
            shown += f"[{label}]"
        else:
            shown += f".{step}" if shown else str(step)
    return shown


def _owner(ctx: PolicyContext, file: str, lines: YamlLines, path: tuple[Step, ...]) -> str:
    """The product a YAML path is part of (a model entry, a Python product's file), else the
    domain."""
    name = version = None
    if len(path) >= 2 and path[0] == "models" and isinstance(path[1], int):
        found = lines.child(lines.find(path[:2]), "name")
        name = found[1].value if found else None
        if len(path) >= 4 and path[2] == "versions" and isinstance(path[3], int):
            v = lines.child(lines.find(path[:4]), "v")
            version = v[1].value if v else None
    for d in ctx.descriptors:
        if d.source_file != file:
            continue
        if d.built_with == "python" or (
            d.name == name and (version is None or str(d.body.major) == version)
        ):
            return str(d.address)
    return f"domain {ctx.domain}"


@register_policy
class ScaffoldTodos(Policy):
    id = "scaffold_todos"
    description = (
        f"No value of a domain's YAML is still a `{TODO_MARKER}` marker (written by the scaffold "
        "and `mesh adopt` where only a person can decide: purpose, grants, descriptions)."
    )
    remedy = f"write the value in place of the `{TODO_MARKER} ...` text"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        for file, path in _yaml_files(ctx):
            lines = file_lines(path)
            for where, line, text in lines.strings():
                if not text.strip().startswith(TODO_MARKER):
                    continue
                field = _path_name(lines, where)
                yield Violation(
                    self.id, _owner(ctx, file, lines, where),
                    f"{field} is still a TODO: {' '.join(text.split())!r}",
                    f"replace the {TODO_MARKER} text of {field} (line {line}) with the value",
                    file, at=line,
                )  # fmt: skip


@register_policy
class GrantExpiry(Policy):
    id = "grant_expiry"
    description = "No grant in a product's descriptor has passed its expiry date."
    remedy = "renew the grant (a later `expires:`) if the principal still needs it, or remove it"
    default_severity = "warn"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        for d in ctx.descriptors:
            for i, grant in enumerate(d.body.grants):
                if not grant.expired(ctx.today):
                    continue
                line = self._line(ctx, d, ("mesh", "grants", i, "expires"))
                yield self.violation(
                    d,
                    f"the grant to {grant.to} expired on {grant.expires.isoformat()}: "
                    f"{grant.to} can no longer read the product",
                    fix=f"renew it (`expires:` a later date) if {grant.to} still needs the "
                    "product, or remove the grant",
                    line=line,
                )

    @staticmethod
    def _line(ctx: PolicyContext, d: ProductDescriptor, field: tuple) -> int | None:
        return descriptor_source(ctx.mesh_root, d).line(field) if ctx.mesh_root else None


def _declared_teams(ctx: PolicyContext) -> set[str]:
    """Teams declared somewhere: in principals.yaml (``team:<t>``) or as a domain's owner."""
    teams: set[str] = set()
    if ctx.mesh_root is not None:
        try:
            principals = load_principals(ctx.mesh_root, set(ctx.domains))
            teams |= {p.removeprefix("team:") for p in principals.specs if p.startswith("team:")}
        except MeshError:
            pass  # principals.yaml's own error is reported by the access policy's reads
    if ctx.mesh is not None:
        for domain in ctx.domains:
            path = ctx.mesh.domains_dir / domain / DOMAIN_FILE
            try:
                spec = parse_domain_spec(domain, None, path=path)
            except MeshError:
                continue  # that domain reports its own broken file
            teams |= {o.removeprefix("team:") for o in spec.owners if o.startswith("team:")}
    return teams


@register_policy
class OwnerDeclared(Policy):
    id = "owner_declared"
    description = (
        "A product's owner team is declared: in principals.yaml (`team:<t>`) or among a "
        "domain's owners in its domain.yaml."
    )
    remedy = "declare the team in principals.yaml, or correct the owner's team"
    default_severity = "warn"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        if ctx.mesh_root is None:
            return
        declared = _declared_teams(ctx)
        for d in ctx.descriptors:
            team = d.body.owner.team
            if team in declared:
                continue
            close = did_you_mean(team, sorted(declared))
            yield self.violation(
                d,
                f"owner team {team!r} is declared nowhere (principals.yaml, domains' owners)"
                + (f"; did you mean {close!r}?" if close else ""),
                fix=(f"write `team: {close}`, or " if close else "")
                + f"declare it in principals.yaml (`- id: team:{team}`) or add `team:{team}` "
                f"to the owners in domains/{d.domain}/{DOMAIN_FILE}",
                line=descriptor_source(ctx.mesh_root, d).line(("mesh", "owner", "team")),
            )


@register_policy
class DomainProducts(Policy):
    id = "domain_products"
    description = "A domain publishes at least one product."
    remedy = "make a model public with a descriptor (`mesh new product`), or remove the domain"
    default_severity = "warn"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:
        if ctx.descriptors or not ctx.complete:
            return
        yield Violation(
            self.id, f"domain {ctx.domain}",
            "declares no product: nothing of it can be read outside the domain",
            f"add one with `mesh new product {ctx.domain} <name>` (or make a model public with "
            "a descriptor), or remove the domain",
            f"domains/{ctx.domain}/{DOMAIN_FILE}",
        )  # fmt: skip
