"""docs/install.md's "What this assumes" and its Dovecot line, against the real Dovecot: Debian's
10-ssl.conf reads its certificate file while parsing, so `ssl = no` alone does not start
Dovecot on a box without the file; the document's one line does."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from install_doc import INSTALL_MD, inline_command

from e2e.mailsys import MAIL_GID, MAIL_UID, run, wait_until

pytestmark = pytest.mark.e2e

DEBIAN_SSL_CONF = Path("/etc/dovecot/conf.d/10-ssl.conf")  # as the dovecot-core package ships it
DEBIAN_CERTS = "/etc/dovecot/private/"


def start_dovecot(root: Path, ssl_conf: Path) -> tuple[int, str]:
    """Start a private Dovecot (LMTP only) that includes `ssl_conf`, and stop it again if it
    started: its exit status and what it said."""
    (root / "run").mkdir()
    conf = root / "dovecot.conf"
    conf.write_text(
        f"base_dir = {root}/run\nstate_dir = {root}/run\ninstance_name = milter-ssl-{root.name}\n"
        f"log_path = {root}/dovecot.log\nprotocols = lmtp\ndefault_internal_user = dovecot\n"
        "default_login_user = dovenull\npassdb {\n  driver = static\n  args = nopassword=y\n}\n"
        f"userdb {{\n  driver = static\n  args = uid={MAIL_UID} gid={MAIL_GID} home={root}/%n\n}}\n"
        f"!include {ssl_conf}\n"
    )
    # Into a file: the daemon it leaves behind keeps its standard output open.
    with (root / "dovecot.out").open("w+") as out:
        started = subprocess.run(
            ["dovecot", "-c", str(conf)], stdout=out, stderr=out, timeout=60, check=False
        )
        out.seek(0)
        said = out.read()
    if started.returncode == 0:
        run(["dovecot", "-c", str(conf), "stop"])
        wait_until(lambda: not (root / "run" / "master.pid").exists(), 30, "Dovecot to stop")
    return started.returncode, said


def debian_ssl_conf(directory: Path) -> Path:
    """Debian's 10-ssl.conf, its certificate files looked for in an empty directory (this box
    may or may not have made them)."""
    text = DEBIAN_SSL_CONF.read_text()
    assert f"ssl_cert = <{DEBIAN_CERTS}" in text and "\nssl = yes\n" in text, DEBIAN_SSL_CONF
    directory.mkdir()
    (directory / "private").mkdir()
    path = directory / "10-ssl.conf"
    path.write_text(text.replace(DEBIAN_CERTS, f"{directory}/private/"))
    return path


def test_dovecot_without_a_certificate_starts_with_the_documents_line(tmp_path: Path) -> None:
    # ssl = no alone: Dovecot still opens the certificate file and does not start.
    alone = debian_ssl_conf(tmp_path / "alone")
    alone.write_text(alone.read_text().replace("\nssl = yes\n", "\nssl = no\n"))
    code, said = start_dovecot(tmp_path / "alone", alone)
    assert code != 0 and "ssl_cert: Can't open file" in said, said

    fixed = debian_ssl_conf(tmp_path / "fixed")
    line = shlex.split(inline_command(INSTALL_MD.read_text(), "sed -i -e 's/^ssl"))
    assert line[-1] == str(DEBIAN_SSL_CONF)
    subprocess.run([*line[:-1], str(fixed)], check=True, timeout=60)
    code, said = start_dovecot(tmp_path / "fixed", fixed)
    assert code == 0, said
    assert "\nssl = no\n" in fixed.read_text()
