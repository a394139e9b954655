"""Federated computational governance: the central policy set, its registry, waivers.

The council owns one file at the mesh root, ``governance.yaml``::

    policies:                      # which policies apply, how hard, with what parameters
      naming: {severity: error}
      contracts: {severity: error, params: {min_deprecation_days: 90}}
    waivers:                       # the only way out: one product, one policy, until a date
      - {product: sales.orders, policy: access, reason: "...", expires: 2027-01-31}

Domains cannot switch a policy off. Every policy the platform ships applies unless the file sets
its severity (``error`` blocks, ``warn`` reports); an expired waiver stops working and says so.
The platform team adds a policy by subclassing :class:`Policy` and decorating it with
:func:`register_policy`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mesh_platform.errors import MeshError
from mesh_platform.formats import load_yaml_model
from mesh_platform.products.descriptor_lines import descriptor_source

if TYPE_CHECKING:
    from mesh_platform.config import Mesh
    from mesh_platform.products.descriptor import ProductDescriptor

GOVERNANCE_FILE = "governance.yaml"
Severity = Literal["error", "warn"]


class GovernanceError(MeshError):
    """The central policy file is malformed or refers to things that do not exist."""


@dataclass(frozen=True)
class Violation:
    """One way a product (or domain) breaks one policy."""

    policy: str
    subject: str  # a product address, or domain '<d>'
    message: str
    fix: str
    file: str
    column: str | None = None
    severity: Severity = "error"
    waived_by: str | None = None  # the waiver's reason, when a valid waiver covers it
    at: int | None = None  # the line of ``file`` it is about, where known

    @property
    def blocking(self) -> bool:
        return self.severity == "error" and self.waived_by is None

    @property
    def where(self) -> str:
        """The file, and the line when known: ``products.yml line 12``."""
        return f"{self.file} line {self.at}" if self.at else self.file

    def line(self) -> str:
        where = f"{self.subject}" + (f" column {self.column}" if self.column else "")
        return f"[{self.policy}] {where}: {self.message} ({self.where}) fix: {self.fix}"


@dataclass
class PolicyContext:
    """What a static policy sees: one domain's products, as declared."""

    domain: str
    descriptors: list[ProductDescriptor]
    nodes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # address -> dbt node
    params: dict[str, Any] = field(default_factory=dict)
    today: dt.date = field(default_factory=dt.date.today)
    mesh_root: Path | None = None  # for mesh-level declarations (principals.yaml)
    domains: frozenset[str] = frozenset()
    mesh: Mesh | None = None  # the mesh, for policies that read the domain's own files
    complete: bool = True  # False: some products failed to load and are not in descriptors


class Policy:
    """A static policy: evaluated on declarations, before anything is built."""

    id: ClassVar[str] = ""
    description: ClassVar[str] = ""
    remedy: ClassVar[str] = ""
    default_severity: ClassVar[Severity] = "error"

    def evaluate(self, ctx: PolicyContext) -> Iterator[Violation]:  # pragma: no cover
        raise NotImplementedError

    def violation(
        self, descriptor: ProductDescriptor, message: str, *, column: str | None = None,
        fix: str | None = None, line: int | None = None,
    ) -> Violation:  # fmt: skip
        return Violation(
            self.id, str(descriptor.address), message, fix or self.remedy,
            descriptor.source_file, column, at=line,
        )  # fmt: skip


_POLICIES: dict[str, Policy] = {}
# Policies evaluated in the publication gate (their checks live in governance/data.py); they
# are configured in the same file.
DATA_POLICY_IDS = frozenset({"pii_detection", "pii_masking_verified"})


def register_policy(cls: type[Policy]) -> type[Policy]:
    if not cls.id or cls.id in _POLICIES or cls.id in DATA_POLICY_IDS:
        raise ValueError(f"policy id {cls.id!r} is empty or already registered")
    _POLICIES[cls.id] = cls()
    return cls


def registered_policies() -> dict[str, Policy]:
    """Every registered policy: the shipped set (registered by the package, governance/builtin.py)
    and any a deployment registers."""
    return dict(_POLICIES)


class PolicySetting(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Severity = "error"
    params: dict[str, Any] = Field(default_factory=dict)


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product: str = Field(description="Product address, e.g. 'sales.orders'.")
    policy: str
    reason: str = Field(min_length=10)
    expires: dt.date


class GovernanceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policies: dict[str, PolicySetting] = Field(default_factory=dict)
    waivers: list[Waiver] = Field(default_factory=list)


@dataclass
class PolicySet:
    """The council's decisions: severity and parameters per policy, and the waivers."""

    settings: dict[str, PolicySetting]
    waivers: list[Waiver]
    path: str
    lines: dict[tuple[str, int], int] = field(default_factory=dict)  # ("waivers", i) -> line

    def severity(self, policy: str) -> Severity:
        setting = self.settings.get(policy)
        if setting is not None:
            return setting.severity
        registered = registered_policies().get(policy)
        return registered.default_severity if registered else "error"

    def params(self, policy: str) -> dict[str, Any]:
        setting = self.settings.get(policy)
        return dict(setting.params) if setting else {}

    def waiver_for(self, product: str, policy: str, today: dt.date) -> Waiver | None:
        return next(
            (
                w for w in self.waivers
                if w.product == product and w.policy == policy and w.expires >= today
            ),
            None,
        )  # fmt: skip

    def expired_waivers(self, today: dt.date) -> list[tuple[int, Waiver]]:
        return [(i, w) for i, w in enumerate(self.waivers) if w.expires < today]


def _line_numbers(text: str) -> dict[tuple[str, int], int]:
    """1-based line of each waiver and each policy key, for error messages."""
    lines: dict[tuple[str, int], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        if key.value == "waivers" and isinstance(value, yaml.SequenceNode):
            for i, item in enumerate(value.value):
                lines[("waivers", i)] = item.start_mark.line + 1
        if key.value == "policies" and isinstance(value, yaml.MappingNode):
            for i, (pkey, _) in enumerate(value.value):
                lines[("policies", i)] = pkey.start_mark.line + 1
    return lines


def _located_problems(exc: ValidationError, lines: Mapping[tuple[str, int], int]) -> str:
    """The pydantic problems of governance.yaml, each with the line of its waiver or policy."""
    problems = []
    for err in exc.errors():
        loc = err["loc"]
        line = (
            lines.get((str(loc[0]), loc[1])) if len(loc) > 1 and isinstance(loc[1], int) else None
        )
        where = f"line {line}: " if line else ""
        problems.append(f"{where}{'.'.join(str(p) for p in loc)}: {err['msg']}")
    return "; ".join(problems)


def load_policy_set(
    root: Path, *, known_products: Iterable[str] | Callable[[set[str]], Iterable[str]] | None = None
) -> PolicySet:
    """Read and validate ``governance.yaml`` (missing file: every policy at its default).

    ``known_products``: the products a waiver may name, or a function giving those of the
    domains the waivers name (asked only if there are waivers: a code location loading
    checks its own domain, and reading every domain's products for it cost N x N manifests
    across the mesh)."""
    path = root / GOVERNANCE_FILE
    shown = GOVERNANCE_FILE
    if not path.is_file():
        return PolicySet({}, [], shown)
    text = path.read_text()
    lines = _line_numbers(text)
    parsed = load_yaml_model(
        path, GovernanceFile, what=shown, error=GovernanceError, text=text, empty={},
        syntax="{what}{line} is not valid YAML ({problem})",
        problems=lambda exc: _located_problems(exc, lines),
        fix="see mesh_platform/governance/policy.py for the file's format",
    )  # fmt: skip
    known_ids = set(registered_policies()) | DATA_POLICY_IDS
    problems = []
    policy_keys = list(parsed.policies)
    for i, policy_id in enumerate(policy_keys):
        if policy_id not in known_ids:
            problems.append(
                f"line {lines.get(('policies', i), '?')}: unknown policy {policy_id!r} "
                f"(known: {', '.join(sorted(known_ids))})"
            )
    if callable(known_products):
        named = {w.product.split(".")[0] for w in parsed.waivers}
        products: set[str] | None = set(known_products(named)) if named else set()
    else:
        products = set(known_products) if known_products is not None else None
    for i, waiver in enumerate(parsed.waivers):
        line = lines.get(("waivers", i), "?")
        if waiver.policy not in known_ids:
            problems.append(f"line {line}: waiver for unknown policy {waiver.policy!r}")
        if products is not None and waiver.product not in products:
            problems.append(f"line {line}: waiver for {waiver.product!r}, which is not a product")
    if problems:
        raise GovernanceError(
            f"{shown}: " + "; ".join(problems),
            fix="use the ids of registered policies and the addresses of existing products",
            path=path,
        )
    return PolicySet(dict(parsed.policies), list(parsed.waivers), shown, lines)


def evaluate_static(policy_set: PolicySet, ctx: PolicyContext) -> list[Violation]:
    """Every registered static policy on one domain, with severities and waivers applied."""
    found: list[Violation] = []
    for policy_id, policy in sorted(registered_policies().items()):
        ctx.params = policy_set.params(policy_id)
        severity = policy_set.severity(policy_id)
        for v in policy.evaluate(ctx):
            waiver = policy_set.waiver_for(v.subject, policy_id, ctx.today)
            found.append(
                Violation(
                    v.policy, v.subject, v.message, v.fix, v.file, v.column, severity,
                    waiver.reason if waiver else None, v.at or _line_of(ctx, v),
                )
            )  # fmt: skip
    for i, waiver in policy_set.expired_waivers(ctx.today):
        if waiver.product.split(".")[0] == ctx.domain:
            found.append(
                Violation(
                    "waivers", waiver.product,
                    f"the waiver for policy {waiver.policy!r} expired on "
                    f"{waiver.expires.isoformat()} and no longer applies",
                    "comply with the policy, or ask the council to renew the waiver",
                    policy_set.path, severity="warn", at=policy_set.lines.get(("waivers", i)),
                )
            )  # fmt: skip
    return found


def _line_of(ctx: PolicyContext, v: Violation) -> int | None:
    """The line a product's violation is about (its column, else its descriptor block), read
    from the file the descriptor is written in."""
    if ctx.mesh_root is None:
        return None
    descriptor = next((d for d in ctx.descriptors if str(d.address) == v.subject), None)
    if descriptor is None:
        return None
    source = descriptor_source(ctx.mesh_root, descriptor)
    return source.line(("columns", v.column) if v.column else ("mesh",))
