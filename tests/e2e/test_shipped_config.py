"""The shipped Dovecot and Postfix files, checked by the programs' own tools."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from e2e.mailsys import DOVECOT_SNIPPETS, POSTFIX_SNIPPETS

pytestmark = pytest.mark.e2e


def test_sieve_script_compiles_cleanly(tmp_path: Path) -> None:
    """Pigeonhole's compiler accepts the shipped script with no warning (docs/install.md runs it)."""
    out = tmp_path / "milter.svbin"
    proc = subprocess.run(
        ["sievec", str(DOVECOT_SNIPPETS / "milter.sieve"), str(out)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and out.stat().st_size > 0, proc.stdout + proc.stderr
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr


def test_master_cf_snippets_are_whole_entries() -> None:
    """Each snippet line is a comment, a service entry or an indented `-o name=value` of one."""
    for name in ("after-queue.master.cf", "before-queue.master.cf"):
        entry = False
        for n, line in enumerate((POSTFIX_SNIPPETS / name).read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0].isspace():
                assert entry and line.split()[0] == "-o" and "=" in line, f"{name}:{n}: {line!r}"
            else:
                fields = line.split()
                assert len(fields) >= 8, f"{name}:{n}: a service entry has 8 fields: {line!r}"
                entry = True
