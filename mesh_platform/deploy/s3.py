"""Object-store policies, one per domain: a domain's credentials reach its own warehouse prefix
and nothing of another domain's that its grants do not give it (``mesh deploy s3-policies``).

In the production profile every engine reads the warehouse with the credentials of the process
it runs in. A domain's code location and runs should hold credentials of their own, limited by
the policy written here (IAM JSON, which AWS IAM and MinIO both read):

- read and write ``<warehouse>/<domain>/``: the domain's products (data, manifests, metadata);
- read ``<warehouse>/mesh/`` (the platform's namespace: SLA history, readable by every
  principal) and write ``<warehouse>/mesh/sla_history/`` (each run records its gate results);
- read, and only read, the table folder of each product the domain consumes and is granted
  today (its dbt mesh inputs and Python products' inputs): the consumed products are staged,
  as the grant allows, inside the domain's run, which reads their files with the domain's
  credentials. The object store cannot apply a grant's columns, rows or masks: those are
  applied by the platform's read path, which the domain's code uses by construction
  (:mod:`mesh_platform.dbt.isolation`) but a domain's Python code could bypass; the policy
  bounds what it could bypass to the products it is granted.

Everything else (other domains' prefixes, the rest of the bucket) is denied by IAM's default
deny. Raw landings and domain DuckDB files are local to the domain's worker, not in the bucket.
Regenerate after a grant changes (an expired grant is left out). Administrative commands
(``mesh maintain``, ``mesh deploy``) keep the platform's own credentials.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mesh_platform.access.grants import plan_read
from mesh_platform.access.principals import load_principals
from mesh_platform.addressing import PLATFORM_NAMESPACE, ProductAddress
from mesh_platform.config import Mesh
from mesh_platform.dbt.nodes import consumed_products
from mesh_platform.dbt.project import load_manifest
from mesh_platform.deploy import GeneratedFile, write_files
from mesh_platform.domain import list_domain_names, load_domain
from mesh_platform.errors import MeshError
from mesh_platform.products.inventory import python_products
from mesh_platform.products.platform import HISTORY
from mesh_platform.products.registry import load_directory
from mesh_platform.workspace import check_workspace

POLICY_VERSION = "2012-10-17"
# What the platform's engines do with objects of a prefix they write (pyiceberg, DuckDB httpfs,
# pyarrow): read, write (multipart uploads too), delete (a quarantined batch), list.
READ_ACTIONS = ["s3:GetObject"]
WRITE_ACTIONS = [
    "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]  # fmt: skip
LIST_ACTIONS = ["s3:ListBucket"]


@dataclass(frozen=True)
class Warehouse:
    """An ``s3://bucket/prefix`` warehouse, as IAM names its parts."""

    bucket: str
    prefix: str  # no leading or trailing '/'; '' for the bucket's root

    @classmethod
    def parse(cls, url: str) -> Warehouse:
        parsed = urlparse(url)
        if parsed.scheme not in ("s3", "s3a") or not parsed.netloc:
            raise MeshError(
                f"the warehouse {url!r} is not in an object store; per-domain object-store "
                "policies are for the production profile's s3:// warehouse",
                fix="set MESH_CATALOG__WAREHOUSE=s3://<bucket>/<prefix> (catalog.warehouse), "
                "or keep the local profile, whose domains share the machine's file system",
            )
        return cls(parsed.netloc, parsed.path.strip("/"))

    def key(self, *parts: str) -> str:
        """The object key prefix of a folder under the warehouse, ending with '/'."""
        return "/".join(p for p in (self.prefix, *parts) if p) + "/"

    def objects(self, *parts: str) -> str:
        return f"arn:aws:s3:::{self.bucket}/{self.key(*parts)}*"

    @property
    def bucket_arn(self) -> str:
        return f"arn:aws:s3:::{self.bucket}"


def domain_policy(warehouse: Warehouse, domain: str, inputs: list[ProductAddress]) -> dict:
    """The IAM policy of ``domain``'s credentials (see the module docstring)."""
    history = (HISTORY.domain, HISTORY.table)
    readable = [(domain,), (PLATFORM_NAMESPACE,), *((a.domain, a.table) for a in inputs)]
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListOwnPlatformAndGrantedPrefixes",
            "Effect": "Allow",
            "Action": LIST_ACTIONS,
            "Resource": [warehouse.bucket_arn],
            "Condition": {"StringLike": {"s3:prefix": [warehouse.key(*p) + "*" for p in readable]}},
        },
        {  # SDKs ask where the bucket is first: no prefix to condition on
            "Sid": "BucketLocation",
            "Effect": "Allow",
            "Action": ["s3:GetBucketLocation"],
            "Resource": [warehouse.bucket_arn],
        },
        {
            "Sid": "OwnProductsReadWrite",
            "Effect": "Allow",
            "Action": WRITE_ACTIONS,
            "Resource": [warehouse.objects(domain)],
        },
        {
            "Sid": "PlatformNamespaceRead",
            "Effect": "Allow",
            "Action": READ_ACTIONS,
            "Resource": [warehouse.objects(PLATFORM_NAMESPACE)],
        },
        {
            "Sid": "PlatformSlaHistoryWrite",
            "Effect": "Allow",
            "Action": WRITE_ACTIONS,
            "Resource": [warehouse.objects(*history)],
        },
    ]
    if inputs:
        statements.append(
            {
                "Sid": "GrantedInputsRead",
                "Effect": "Allow",
                "Action": READ_ACTIONS,
                "Resource": [warehouse.objects(a.domain, a.table) for a in inputs],
            }
        )
    return {"Version": POLICY_VERSION, "Id": f"mesh-domain-{domain}", "Statement": statements}


def granted_inputs(
    mesh: Mesh, domain: str, *, today: dt.date | None = None
) -> tuple[list[ProductAddress], list[str]]:
    """Products of other domains that ``domain`` consumes and is granted today, and a note for
    each one it consumes without a grant (left out of its policy)."""

    consumed = {a for a, _ in consumed_products(load_manifest(load_domain(mesh, domain)))}
    consumed |= {a for p in python_products(mesh, domain) for a in p.inputs}
    principal = load_principals(mesh.root, set(list_domain_names(mesh))).resolve(domain)
    directory = load_directory(mesh, refresh=False)
    granted, notes = [], []
    for address in sorted(a for a in consumed if a.domain != domain):
        try:
            descriptor = directory.get(address)
            plan_read(
                principal,
                descriptor,
                stored_columns=[c.name for c in descriptor.columns],
                today=today,
            )
        except MeshError as exc:
            notes.append(f"{domain} consumes {address} without a usable grant ({exc.what}): "
                         "left out of its policy")  # fmt: skip
            continue
        granted.append(address)
    return granted, notes


def _readme(warehouse: Warehouse, policies: dict[str, list[ProductAddress]]) -> str:
    lines = [
        "# Object-store policies, one per domain",
        "",
        "Generated by `mesh deploy s3-policies` from the mesh's domains and grants: regenerate",
        "after a grant changes, do not edit. Each `<domain>.json` is an IAM policy document for",
        "the credentials of that domain's code location and runs only: read/write on",
        f"`s3://{warehouse.bucket}/{warehouse.key('<domain>')}`, read on the platform's",
        f"namespace `s3://{warehouse.bucket}/{warehouse.key(PLATFORM_NAMESPACE)}` (write on its",
        "`sla_history/`), read on the table folder of each product the domain is granted;",
        "everything else is denied (IAM's default deny).",
        "",
        "Apply (one user per domain, e.g. mesh-sales):",
        "",
        "- AWS: `aws iam create-user --user-name mesh-<domain>`, then",
        "  `aws iam put-user-policy --user-name mesh-<domain> --policy-name mesh-<domain>",
        "  --policy-document file://<domain>.json`, and `aws iam create-access-key`.",
        "- MinIO: `mc admin user add ALIAS mesh-<domain> <secret>`, then",
        "  `mc admin policy create ALIAS mesh-<domain> <domain>.json` and",
        "  `mc admin policy attach ALIAS mesh-<domain> --user mesh-<domain>`.",
        "",
        "Then give each domain its own credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY):",
        "with `mesh deploy helm`, one Kubernetes secret per domain in the `envSecrets` of that",
        "domain's deployment in values-user-deployments.yaml (runs inherit it). Platform jobs",
        "(`mesh maintain`, `mesh deploy`, the webserver) keep the platform's credentials.",
        "",
        "| domain | granted inputs it may read |",
        "|---|---|",
    ]
    for domain, inputs in policies.items():
        lines.append(f"| {domain} | {', '.join(map(str, inputs)) or 'none'} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class S3Policies:
    files: dict[str, GeneratedFile]
    inputs: dict[str, list[ProductAddress]]  # domain -> granted inputs its policy may read
    notes: list[str]


def s3_policies(mesh: Mesh, *, today: dt.date | None = None) -> S3Policies:
    """One policy per domain of workspace.yaml and a README, rendered (nothing written)."""

    warehouse = Warehouse.parse(mesh.warehouse)
    files: dict[str, GeneratedFile] = {}
    inputs: dict[str, list[ProductAddress]] = {}
    notes: list[str] = []
    for location in check_workspace(mesh):
        granted, found = granted_inputs(mesh, location.name, today=today)
        inputs[location.name] = granted
        notes += found
        policy = domain_policy(warehouse, location.name, granted)
        files[f"{location.name}.json"] = GeneratedFile(json.dumps(policy, indent=2) + "\n")
    files["README.md"] = GeneratedFile(_readme(warehouse, inputs))
    return S3Policies(files, inputs, notes)


def write_s3_policies(mesh: Mesh, output: Path) -> tuple[S3Policies, list[Path]]:
    """``mesh deploy s3-policies --output DIR``: render, then write every file."""
    policies = s3_policies(mesh)
    return policies, write_files(output, policies.files, what="object-store policies")
