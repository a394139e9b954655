"""docs/operations.md, the recovery runbook: every procedure is exercised by a test of this
suite, and every command it tells an operator to type exists with the options it shows."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from mesh_platform.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
RUNBOOK = REPO / "docs" / "operations.md"
PLACEHOLDERS = {
    "<domain>": "sales",
    "<producer>": "sales",
    "<consumer>": "marketing",
    "<product>": "orders",
    "<domain>.<product>": "sales.orders",
    "<why>": "replaced by its next major",
}


def _procedures() -> dict[str, str]:
    sections = re.split(r"^## ", RUNBOOK.read_text(), flags=re.M)[1:]
    return {s.splitlines()[0].strip(): s for s in sections}


def _commands() -> list[str]:
    return sorted(set(re.findall(r"`(mesh [^`]+)`", RUNBOOK.read_text())))


def test_the_runbook_has_procedures() -> None:
    assert len(_procedures()) >= 6


@pytest.mark.parametrize("title", sorted(_procedures()))
def test_each_procedure_is_exercised_by_a_test(title: str) -> None:
    section = _procedures()[title]
    line = re.search(r"^Tests?: (.+)$", section, flags=re.M)
    named = re.findall(r"`(tests/[\w/]+\.py)`", line.group(1)) if line else []
    assert named, f"procedure {title!r} names no test (`Test: tests/chaos/test_x.py`)"
    for path in named:
        assert (REPO / path).is_file(), f"{title!r} names {path}, which does not exist"
        assert re.search(r"^def test_", (REPO / path).read_text(), flags=re.M)


@pytest.mark.parametrize("command", _commands())
def test_each_command_of_the_runbook_exists_with_its_options(command: str) -> None:
    text = command
    for placeholder, value in sorted(PLACEHOLDERS.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(placeholder, value)
    args = shlex.split(text)[1:]
    assert "<" not in text, f"unknown placeholder in {command!r}"
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, f"{command!r}: {result.output}"
