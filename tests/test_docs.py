"""The documentation stays true to the code: the command line reference names every command,
flag and pass, and the README's test command is the one CI runs. (Links and anchors between
the pages: ``mkdocs build --strict`` in the test command.)"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from caffec.cli import _parser
from caffec.compiler.pipeline import PASS_NAMES

REPO = Path(__file__).resolve().parents[1]
CLI = (REPO / "docs/cli.md").read_text(encoding="utf-8")


def _sections() -> dict[str, str]:
    """The text under each ``## caffec NAME`` heading of the CLI reference."""
    parts = re.split(r"^## caffec ([\w-]+)\n", CLI, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_and_flag_is_in_the_cli_reference() -> None:
    sections = _sections()
    missing = []
    for name, parser in _commands().items():
        if name not in sections:
            missing.append(f"## caffec {name}")
            continue
        for action in parser._actions:
            for flag in action.option_strings or [action.dest]:
                if f"`{flag}`" not in sections[name]:
                    missing.append(f"{name} {flag}")
    assert not missing, missing


def test_the_pass_table_lists_the_pipeline() -> None:
    dump = _sections()["dump"]
    rows = re.findall(r"^\| `(\w+)` \| (?:layer|kernel) graph \|", dump, flags=re.M)
    assert rows == PASS_NAMES


def test_the_readme_test_command_is_what_ci_runs() -> None:
    ci = (REPO / ".ci/run").read_text(encoding="utf-8").strip().splitlines()[-1]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"```sh\n{ci}\n```" in readme
    assert ci in (REPO / "docs/getting-started.md").read_text(encoding="utf-8")
    assert ci in (REPO / "docs/contributing.md").read_text(encoding="utf-8")


def test_the_layer_table_lists_every_registered_layer_type() -> None:
    """docs/layers.md's table has one row per layer type the registry knows, no more."""
    from caffec.compiler.registry import known_types

    text = (REPO / "docs/layers.md").read_text(encoding="utf-8")
    table = text.split("## Layer types", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+)(?: \(fork[^|]*\))? \|", table, flags=re.M)
    rows = [r for r in rows if r != "layer"]  # the header
    assert len(rows) == len(set(rows)), "a layer type has two rows"
    assert sorted(rows) == sorted(known_types())
