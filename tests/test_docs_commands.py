"""Every `mrlfads` command the README and docs/ show in a code block parses as the CLI reads
it: a user copies these. (The README's `--window -1.0:1.0` once stopped in argparse.)"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from mrlfads.training.cli import build_parser, join_negative_ranges

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND = re.compile(r"(?:^|\s--\s+)(mrlfads\s.*)")  # a line's command, or one after ` -- `


def code_commands(text: str) -> list[str]:
    """`mrlfads ...` command lines inside fenced or indented code, continuation lines
    joined, comments dropped; also one run through `ray job submit ... -- mrlfads ...`."""
    found, fenced = [], False
    for raw in text.replace("\\\n", " ").splitlines():
        if raw.strip().startswith("```"):
            fenced = not fenced
            continue
        if not (fenced or raw.startswith("    ")):
            continue
        match = COMMAND.search(raw.strip())
        if match:
            found.append(" ".join(match[1].split(" #")[0].split()))
    return found


def test_the_extractor_finds_fenced_indented_joined_and_submitted_commands():
    text = ("```bash\nmrlfads train --data d \\\n    --epochs 3   # c\nls\n```\n"
            "prose mrlfads ui\n    mrlfads ui --port 1\n"
            "```\nray job submit -- \\\n    mrlfads sweep --data d\n```\n")
    assert code_commands(text) == ["mrlfads train --data d --epochs 3", "mrlfads ui --port 1",
                                   "mrlfads sweep --data d"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_docs_parses(doc, capsys):
    parser = build_parser()
    commands = code_commands(doc.read_text())
    if doc.name == "README.md":
        assert len(commands) >= 19  # the quick start, the DANDI recipe, the cluster job
    for line in commands:
        try:
            parser.parse_args(join_negative_ranges(shlex.split(line)[1:]))
        except SystemExit:
            pytest.fail(f"{doc.name}: {line!r} does not parse: {capsys.readouterr().err}")
