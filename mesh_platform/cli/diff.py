"""``mesh diff``: breaking changes of product contracts against a base revision; who breaks."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET

import click
from rich.markup import escape
from rich.table import Table

from mesh_platform.cli.common import load_context_mesh, out
from mesh_platform.cli.main import mesh_command
from mesh_platform.cli.options import format_option
from mesh_platform.discovery.diff import diff_report
from mesh_platform.errors import printable


@click.command()
@click.option(
    "--base",
    "base",
    required=True,
    metavar="GIT_REF",
    help="The revision to compare with: a commit, branch or tag (e.g. origin/main).",
)
@click.option(
    "--days",
    default=30,
    show_default=True,
    type=click.IntRange(min=1),
    help="Readers from the audit log of the last N days.",
)
@format_option("table", "json", "junit")
@click.pass_context
@mesh_command
def diff(ctx: click.Context, base: str, days: int, fmt: str) -> None:
    """Compare every product's contract with a git revision (columns added, removed, renamed,
    retyped; grants; classification and masking) and name who each breaking change breaks:
    consuming domains down to their models and columns, and the audit log's readers. Exit 1 on a
    breaking change without a major version bump."""
    mesh = load_context_mesh(ctx)
    report = diff_report(mesh, base, days=days)
    if fmt == "json":
        click.echo(json.dumps(report, indent=2, default=str))
    elif fmt == "junit":
        click.echo(junit_report(report))
    else:
        _print(report)
    if report["violations"]:
        raise SystemExit(1)


def _who(item: dict[str, Any]) -> str:
    """Who a breaking change breaks, in a few lines."""
    lines = []
    for c in item.get("consumers", []):
        models = ", ".join(m["name"] + (" (column use unknown)" if m["opaque"] else "")
                           for m in c["models"])  # fmt: skip
        products = ", ".join(p["address"] + (f" [{', '.join(p['columns'])}]" if p["columns"]
                             else "") for p in c["products"])  # fmt: skip
        lines.append(f"domain {c['domain']}: uses it in {models or 'no model (input only)'}"
                     + (f"; products: {products}" if products else ""))  # fmt: skip
    for r in item.get("readers", []):
        cols = ", ".join(r["columns"]) or "the product"
        lines.append(f"reader {r['principal']}: {r['queries']} quer"
                     f"{'y' if r['queries'] == 1 else 'ies'} of {cols}, last {r['last_read'][:16]}"
                     + ("" if r["exact"] else " (columns estimated)"))  # fmt: skip
    return "\n".join(lines) or "nobody found (no consumer, no reader)"


def _print(report: dict[str, Any]) -> None:
    base = report["base"]
    table = Table(title=f"mesh diff against {base['ref']} ({base['commit'][:12]}): "
                        f"{report['breaking']} breaking change(s), "
                        f"{report['violations']} without a major version bump")  # fmt: skip
    for column in ("product", "change", "breaking", "who breaks"):
        table.add_column(column, overflow="fold")
    for p in report["products"]:
        label = p["address"]
        if p["status"] == "major bump":
            label += f" -> {p['head']['address']} ({p['head']['version']})"
        for item in p["changes"]:
            if item["breaking"]:
                allowed = f"yes, allowed ({item['allowed_by']})"
                verdict = allowed if item.get("allowed") else "[red]yes[/]"
            else:
                verdict = "no"
            who = _who(item) if item["breaking"] else ""
            table.add_row(label, escape(item["message"]), verdict, escape(printable(who)))
        if p["status"] == "added":
            table.add_row(p["address"], f"product added ({p['head']['version']})", "no", "")
    for problem in report["problems"]:
        table.add_row(problem["subject"], escape(printable(problem["problem"])), "[red]unknown[/]",
                      "")  # fmt: skip
    if table.row_count:
        out.print(table)
    if report["violations"]:
        out.print(f"[red]{report['violations']} violation(s)[/]: {report['versioning_rule']}")
    elif not any(p["changes"] or p["status"] != "unchanged" for p in report["products"]):
        out.print("no contract changed")


def junit_report(report: dict[str, Any]) -> str:
    """JUnit XML: one test case per product, a failure per breaking change without a major
    version bump (allowed breaking changes are listed in the case's output with who they
    break), one failing case per product whose descriptor cannot be read."""
    suites = ET.Element("testsuites", name="mesh diff")
    cases = len(report["products"]) + len(report["problems"])
    suite = ET.SubElement(suites, "testsuite", name=f"contracts vs {report['base']['ref']}",
                          tests=str(cases), failures=str(report["violations"]))  # fmt: skip
    for p in report["products"]:
        case = ET.SubElement(suite, "testcase", classname=p["address"].split(".")[0],
                             name=p["address"], file=(p["head"] or {}).get("file", ""))  # fmt: skip
        notes = []
        for item in p["changes"]:
            if item["breaking"] and not item.get("allowed"):
                failure = ET.SubElement(case, "failure", type=item["kind"], message=item["message"])
                failure.text = _who(item) + f"\nfix: {report['versioning_rule']}"
            elif item["breaking"]:
                notes.append(f"{item['message']} (allowed: {item['allowed_by']})\n{_who(item)}")
            else:
                notes.append(item["message"])
        if notes:
            ET.SubElement(case, "system-out").text = "\n".join(notes)
    for problem in report["problems"]:
        case = ET.SubElement(suite, "testcase", classname="problems", name=problem["subject"])
        ET.SubElement(case, "failure", type="unreadable", message=problem["problem"])
    return ET.tostring(suites, encoding="unicode")
