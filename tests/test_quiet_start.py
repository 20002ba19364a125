"""`milter serve` as a real process with a HOME of its own: onnxruntime's telemetry writes nothing
there (no device ID, no SQLite event store) and logs nothing in milter's log, and the daemon
writes only where its configuration says."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODEL_PATH, RULES_PATH, free_port

HAM = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: lunch\r\n\r\nFriday at 12:30?\r\n"


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("home_kind", ["writable", "unusable"])
def test_serve_writes_nothing_under_home_and_logs_no_library_noise(tmp_path: Path, home_kind: str) -> None:
    # writable: where onnxruntime would create .cache/Microsoft/DeveloperTools/.onnxruntime/;
    # unusable (below a plain file): where it would log "Failed to persist telemetry device ID".
    home = tmp_path / "home"
    if home_kind == "writable":
        home.mkdir()
    else:
        (tmp_path / "file").write_text("")
        home = tmp_path / "file" / "home"
    work = tmp_path / "work"  # the working directory: nothing is configured to go there
    work.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "XDG_"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    argv = [
        sys.executable, "-m", "milter", "serve", "--listen", f"127.0.0.1:{port}",
        "--rules", str(RULES_PATH), "--model", str(MODEL_PATH), "--no-watch",
        "--next-hop", f"maildir:{tmp_path / 'Maildir'}", "--quarantine", str(tmp_path / "quarantine"),
        "--config", str(tmp_path / "milter.yaml"),
    ]  # fmt: skip
    (tmp_path / "milter.yaml").write_text("# all defaults: not the box's /etc/milter/milter.yaml\n")
    proc = subprocess.Popen(
        argv, cwd=work, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        for line in proc.stderr:  # until the daemon says it listens (or exits)
            lines.append(line)
            if "listening on" in line:
                break
        assert proc.poll() is None, "".join(lines)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], HAM)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert "action=deliver" in log  # the message was scored, so onnxruntime ran in earnest
    assert "onnxruntime" not in log and "telemetry" not in log and "\x1b[" not in log, log
    if home_kind == "writable":
        assert files_under(home) == []
    else:
        assert not home.exists()
    assert files_under(work) == []
    assert len(list((tmp_path / "Maildir" / "new").iterdir())) == 1
