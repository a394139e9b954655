"""Reports of `mesh check`'s policy violations in the formats CI systems read (JUnit XML)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from xml.etree import ElementTree as ET

from mesh_platform.governance.policy import Violation


def junit_report(results: Mapping[str, Sequence[Violation]]) -> str:
    """JUnit XML of the violations of each domain: a test suite per domain, a failure per
    blocking violation, a skipped test per waived or non-blocking one, one passing test
    ("all policies") for a domain without any."""
    suites = ET.Element("testsuites", name="mesh check")
    for domain, violations in results.items():
        suite = ET.SubElement(
            suites, "testsuite", name=domain, tests=str(max(1, len(violations))),
            failures=str(sum(v.blocking for v in violations)),
        )  # fmt: skip
        if not violations:
            ET.SubElement(suite, "testcase", classname=domain, name="all policies")
        for v in violations:
            case = ET.SubElement(
                suite, "testcase", classname=f"{domain}.{v.policy}",
                name=v.subject + (f".{v.column}" if v.column else ""), file=v.file,
                **({"line": str(v.at)} if v.at else {}),
            )  # fmt: skip
            if v.blocking:
                ET.SubElement(case, "failure", message=v.message).text = f"fix: {v.fix}"
            else:
                ET.SubElement(case, "skipped", message=v.waived_by or f"{v.severity}: {v.message}")
    return ET.tostring(suites, encoding="unicode")
