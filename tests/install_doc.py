"""docs/install.md as the tests read it: its sections, code blocks and inline commands, so that
the tests run what the document says (with only paths and ports changed) and a changed
document fails them instead of leaving them testing something else."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

INSTALL_MD = Path(__file__).resolve().parent.parent / "docs" / "install.md"
_FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)


def section(heading: str) -> str:
    """The text under the `## ...` heading that starts with `heading`, up to the next one."""
    text = INSTALL_MD.read_text()
    found = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert found, f"{INSTALL_MD}: no section '## {heading}'"
    return found.group(1)


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of `language` in `text` (list items' indented ones too)."""
    return [textwrap.dedent(body) for _, lang, body in _FENCE.findall(text) if lang == language]


def block_after(text: str, marker: str, language: str = "sh") -> str:
    """The first `language` block after `marker` in `text`."""
    at = text.find(marker)
    assert at >= 0, f"{INSTALL_MD}: {marker!r} not found"
    found = blocks(text[at:], language)
    assert found, f"{INSTALL_MD}: no {language} block after {marker!r}"
    return found[0]


def commands(block: str) -> list[list[str]]:
    """Each command line of a shell block as argv, comments dropped."""
    return [argv for line in block.splitlines() if (argv := shlex.split(line, comments=True))]


def inline_command(text: str, containing: str) -> str:
    """The one `inline code` span in `text` (line breaks read as spaces) containing `containing`."""
    prose = " ".join(_FENCE.sub("", text).split())
    spans = [s for s in re.findall(r"`([^`]+)`", prose) if containing in s]
    assert len(spans) == 1, f"{INSTALL_MD}: expected one command with {containing!r}, found {spans}"
    return spans[0]
