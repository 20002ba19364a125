"""bench/bench_faults.py's short form: 3,000 messages through `milter serve --workers 2` while
every kind of fault fires (kills, a drain that runs out, the next hop refusing, hanging,
resetting and closing, the quarantine's disk full and read-only, floods of reloads with bad
files, clients cutting mid-DATA). Nothing the client got 250 for may be missing, nothing may be
delivered half, nothing cut mid-DATA may be anywhere, and every duplicate must come from an
attempt whose client did not get 250. Needs root (the quarantine's own tmpfs), as CI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

KINDS = {
    "kill-milter", "kill-worker", "sigterm-drain", "hop-refuse", "hop-hang", "hop-reset-mid-data",
    "hop-close-after-data", "hop-hang-after-data", "disk-full", "disk-read-only", "reload-flood",
}  # fmt: skip


def test_short_fault_campaign_loses_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the fault campaign mounts a tmpfs and needs root (CI runs as root)", pytrace=False)
    out = tmp_path / "counts.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_faults.py"), "--short", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = json.loads(out.read_text())
    assert set(counts["faults"]) == KINDS, counts["faults"]  # every kind fired
    assert counts["accepted"] == counts["messages"] - counts["cut"] > 2500
    assert counts["lost"] == counts["half"] == counts["cut_delivered"] == counts["doubled"] == 0
    assert counts["refused_5xx"] == 0 and counts["reload_refusals"] > 0
    assert counts["starts"] >= 3  # restarted after the kill and after the drain
    assert "RSS/fds over the" in counts["flat"] and "GREW" not in counts["flat"]
