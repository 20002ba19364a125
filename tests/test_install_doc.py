"""docs/install.md step 2, followed as written in a scratch root: its shell lines install the
sysusers and tmpfiles files (into /etc/sysusers.d and /etc/tmpfiles.d, which need creating),
make the user and the directories, copy the rules and the model; its milter.yaml then passes
`milter check --config`, and so does its smtpd_milters variant, as the document describes it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from install_doc import block_after, blocks, commands, section

from milter.cli import main

REPO = Path(__file__).resolve().parent.parent
SCRATCH_COMMANDS = ("install", "systemd-sysusers", "systemd-tmpfiles")


def in_root(root: Path, argv: list[str]) -> list[str]:
    """A step-2 command aimed at `root` instead of /: --root for systemd's tools, paths prefixed."""
    assert argv[0] in SCRATCH_COMMANDS, f"install.md step 2 runs {argv}; this test knows {SCRATCH_COMMANDS}"
    if argv[0] != "install":
        return [argv[0], f"--root={root}", *argv[1:]]
    return [f"{root}{arg}" if arg.startswith(("/etc/", "/var/")) else arg for arg in argv]


def rooted(text: str, root: Path) -> str:
    return re.sub(r"(?<=[\s:])(/etc/|/var/)", lambda m: f"{root}{m.group(1)}", text)


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The scratch root after step 2's shell lines."""
    root = tmp_path / "root"
    root.mkdir()
    block = block_after(section("2. User and directories"), "```sh")
    argvs = commands(block)
    assert argvs[0] == ["cd", "/path/to/milter-checkout"]
    for argv in argvs[1:]:
        cmd = in_root(root, argv)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=60)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}{proc.stderr}"
    return root


def test_step_2_makes_the_user_and_the_layout(installed: Path) -> None:
    root = installed
    assert (root / "etc/sysusers.d/milter.conf").read_bytes() == (
        REPO / "systemd/milter.sysusers"
    ).read_bytes()
    assert (root / "etc/tmpfiles.d/milter.conf").read_bytes() == (
        REPO / "systemd/milter.tmpfiles"
    ).read_bytes()
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    uid = int(passwd["milter"][2])
    assert passwd["milter"][5:] == ["/var/lib/milter", "/usr/sbin/nologin"]
    for path, owner, mode in (
        ("etc/milter/rules", 0, 0o755),
        ("var/lib/milter", uid, 0o750),
        ("var/lib/milter/model", 0, 0o755),
        ("var/lib/milter/quarantine", uid, 0o750),
    ):
        st = (root / path).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (owner, mode), path
    assert (root / "etc/milter/rules/default.yaml").read_bytes() == (REPO / "rules/default.yaml").read_bytes()
    assert (root / "var/lib/milter/model/spam.onnx").read_bytes() == (REPO / "model/spam.onnx").read_bytes()


def test_the_config_file_of_step_2_and_its_milter_variant_pass_check(
    installed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [yaml] = blocks(section("2. User and directories"), "yaml")
    config = installed / "etc/milter/milter.yaml"
    config.write_text(rooted(yaml, installed))
    assert main(["check", "--config", str(config)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith(f"{config}: ok: smtp on 127.0.0.1:10025, after-queue mode\n")
    assert f"{installed}/var/lib/milter/model/spam.onnx: ok: model " in out

    # "replace the next_hop and mode lines with protocol: milter"
    lines = [ln for ln in yaml.splitlines() if not ln.startswith(("next_hop:", "mode:"))]
    config.write_text(rooted("\n".join(["protocol: milter", *lines]), installed))
    assert main(["check", "--config", str(config)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith(f"{config}: ok: milter on 127.0.0.1:10025, before-queue mode\n")
    # ... and "milter refuses mode: after-queue beside it".
    config.write_text(rooted(f"protocol: milter\n{yaml}", installed))
    assert main(["check", "--config", str(config)]) == 2
    assert "mode: after-queue contradicts protocol: milter (line 1)" in capsys.readouterr().err
