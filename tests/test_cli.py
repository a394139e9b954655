import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mesh_platform.cli.main import cli

COMMANDS = [
    [], ["build"], ["prepare"], ["ui"], ["workspace"], ["maintain"], ["check"], ["query"],
    ["products"], ["describe"], ["audit"], ["catalog"], ["export"], ["new"], ["new", "domain"],
    ["new", "product"], ["sla"], ["doctor"], ["repair"], ["deploy"], ["deploy", "trino"], ["deploy", "helm"],
    ["deploy", "s3-policies"], ["serve"], ["token"], ["token", "create"], ["token", "list"],
    ["token", "revoke"], ["diff"], ["adopt"], ["usage"], ["retire"], ["deprecations"], ["up"],
    ["status"], ["down"],
]  # fmt: skip


def test_every_command_is_listed_here():
    """A new command gets its --help tested: COMMANDS covers every command and subcommand."""

    def walk(group: click.Group, prefix: list[str]):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            yield [*prefix, name]
            if isinstance(command, click.Group):
                yield from walk(command, [*prefix, name])

    assert sorted(walk(cli, [])) == sorted(c for c in COMMANDS if c)


def test_mesh_help_lists_each_command_with_its_own_short_help():
    """`mesh --help` reads the short help from the commands' source without importing them:
    it is the short help of the command itself, at any terminal width."""
    ctx = click.Context(cli)
    for width in (60, 80, 200):
        formatter = click.HelpFormatter(width=width)
        cli.format_commands(ctx, formatter)
        listed = formatter.getvalue()
        names = cli.list_commands(ctx)
        limit = width - 6 - max(map(len, names))
        for name in names:
            short = cli.get_command(ctx, name).get_short_help_str(limit)
            assert re.search(rf"^  {name} +{re.escape(short)}$", listed, flags=re.M), (name, listed)


def test_mesh_help_imports_no_command():
    """Listing the commands imports none of their modules (nor Dagster): `mesh --help` is quick."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from mesh_platform.cli.main import COMMANDS, cli\n"
        "result = CliRunner().invoke(cli, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "loaded = {f'mesh_platform.cli.{m}' for m in COMMANDS.values()} & set(sys.modules)\n"
        "assert not loaded and 'dagster' not in sys.modules, (loaded, result.output)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "mesh")
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    assert "--help" in result.output


def test_broken_dbt_project_names_domain_file_and_fix(mesh_copy):
    model = mesh_copy.root / "dbt_projects/sales/models/products/products.yml"
    model.write_text(model.read_text().replace("models:", "models:\n  - name: [broken", 1))
    result = CliRunner().invoke(
        cli, ["--root", str(mesh_copy.root), "prepare", "--domain", "sales"]
    )
    assert result.exit_code == 1
    assert "domain 'sales'" in result.output
    assert "dbt parse" in result.output
    assert "products.yml" in result.output
    assert "mesh prepare --domain sales" in result.output
    assert "Traceback" not in result.output


def test_workspace_pointing_at_a_missing_domain(mesh_copy):
    workspace = mesh_copy.workspace_file
    workspace.write_text(
        workspace.read_text().replace("location_name: sales", "location_name: finance")
    )
    result = CliRunner().invoke(cli, ["--root", str(mesh_copy.root), "workspace"])
    assert result.exit_code == 1
    assert "finance" in result.output
    assert "workspace.yaml" in result.output


def test_workspace_write_regenerates_from_domains(mesh_copy):
    mesh_copy.workspace_file.write_text("load_from: []\n")
    result = CliRunner().invoke(cli, ["--root", str(mesh_copy.root), "workspace", "--write"])
    assert result.exit_code == 0, result.output
    assert "3 domain(s): logistics, marketing, sales" in result.output


def test_unwritable_state_dir(mesh_copy, monkeypatch):
    blocker = mesh_copy.root / "blocker"
    blocker.write_text("a file, not a directory")
    monkeypatch.setenv("MESH_STATE_DIR", str(blocker / "state"))
    result = CliRunner().invoke(cli, ["--root", str(mesh_copy.root), "prepare"])
    assert result.exit_code == 1
    assert "not writable" in result.output
    assert str(blocker) in result.output
