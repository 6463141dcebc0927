"""The README's examples run: its Python snippet, and every `lmforge` command it shows
parses with the real argument parser."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from lmforge.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_python_snippet_runs(capsys):
    (snippet,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    exec(compile(snippet, "README.md", "exec"), {})
    assert len(capsys.readouterr().out.strip()) > 0


def test_every_cli_example_parses():
    commands = re.findall(r"\.venv/bin/lmforge ((?:[^\n\\#]|\\\n)+)", README)
    assert len(commands) >= 6
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command.replace("\\\n", " ")))
        assert callable(args.func), command
