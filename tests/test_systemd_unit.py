"""The shipped systemd units, checked with systemd's own tools (the user and the directories:
tests/test_install_doc.py, installed as docs/install.md does).

`systemd-analyze verify` must print nothing at all (it reports unknown keys, bad values and
missing commands as warnings and still exits 0); `systemd-analyze security --offline=true`
must rate the units' exposure at 2.0 or below. Neither needs a running systemd.

`verify` checks that ExecStart's program exists; the units name the installed path
/opt/milter/bin/milter (docs/install.md), so the check runs on a copy in which that one path is
replaced by this checkout's `milter` command; nothing else is changed.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
UNITS = ("milter.service", "milter@.service")
INSTALLED_COMMAND = "/opt/milter/bin/milter"
MAX_EXPOSURE = 2.0


def milter_command() -> str:
    found = Path(sys.executable).parent / "milter"
    if found.exists():
        return str(found)
    which = shutil.which("milter")
    assert which, "the `milter` command is not installed (pip install -e .)"
    return which


def unit_copy(name: str, tmp_path: Path) -> Path:
    text = (SYSTEMD / name).read_text()
    assert INSTALLED_COMMAND in text, f"{name}: expected ExecStart to run {INSTALLED_COMMAND}"
    copy = tmp_path / name
    copy.write_text(text.replace(INSTALLED_COMMAND, milter_command()))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, check=False, timeout=120
    )


@pytest.mark.parametrize("name", UNITS)
def test_verify_prints_no_warning(name: str, tmp_path: Path) -> None:
    proc = analyze("verify", "--man=no", str(unit_copy(name, tmp_path)))
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", f"systemd-analyze verify {name}:\n{output}"


@pytest.mark.parametrize("name", UNITS)
def test_security_exposure_at_most_2(name: str) -> None:
    proc = analyze("security", "--offline=true", "--no-pager", str(SYSTEMD / name))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert found, f"no exposure level in:\n{proc.stdout}{proc.stderr}"
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, f"{name}: exposure {exposure} > {MAX_EXPOSURE}:\n{proc.stdout}"


@pytest.mark.parametrize("name", UNITS)
def test_unit_has_the_promised_settings(name: str) -> None:
    """What docs/install.md promises: notify, reload, watchdog, restart, own user, hardening."""
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    expected = {
        "Type": ["notify"],
        "Restart": ["on-failure"],
        "User": ["milter"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "PrivateTmp": ["yes"],
        "CapabilityBoundingSet": [""],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "StateDirectory": ["milter"],
    }
    for key, value in expected.items():
        assert settings.get(key) == value, f"{name}: {key}={settings.get(key)}, expected {value}"
    assert settings["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert "WatchdogSec" in settings and "SystemCallFilter" in settings


# Most of the unit's sandbox needs systemd to set up (namespaces, mounts, users), but three
# parts are plain kernel features a process can put on itself before it execs the daemon, and
# they are the ones that break programs that do unexpected things: NoNewPrivileges= (the
# PR_SET_NO_NEW_PRIVS flag), MemoryDenyWriteExecute= (PR_SET_MDWE, Linux >= 6.3; systemd >= 253
# uses it too) and SystemCallFilter= (a seccomp filter; built here with libseccomp from the
# unit's own SystemCallFilter= lines and systemd's own syscall groups, failing calls getting
# EPERM as SystemCallErrorNumber=EPERM says). All three survive execve. If onnxruntime, uvloop,
# the inotify watcher or the text workers needed a forbidden call or writable+executable
# memory, the daemon would fail here.
SANDBOX = r"""
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 38, 65, 1
SCMP_ACT_ALLOW, SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_NO_NEW_PRIVS: " + os.strerror(ctypes.get_errno()))
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE (Linux >= 6.3): " + os.strerror(ctypes.get_errno()))
seccomp.seccomp_init.restype = ctypes.c_void_p
seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = seccomp.seccomp_init(SCMP_ACT_ERRNO | errno.EPERM)
allowed = sys.argv[1].split(",")
for name in allowed:
    nr = seccomp.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # names of other architectures resolve to nothing here
        if seccomp.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) != 0:
            sys.exit(f"seccomp_rule_add {name} failed")
if seccomp.seccomp_load(ctx) != 0:
    sys.exit("seccomp_load failed")
os.execv(sys.argv[2], sys.argv[2:])
"""
# Printed by the daemon's process before it starts: the MDWE state, and what a call the filter
# forbids (sched_setaffinity, in @resources) gets.
PROBE = """\
import ctypes, os, sys
print("mdwe", ctypes.CDLL(None).prctl(66, 0, 0, 0, 0), file=sys.stderr)
try:
    os.sched_setaffinity(0, os.sched_getaffinity(0))
    print("sched_setaffinity allowed", file=sys.stderr)
except PermissionError:
    print("sched_setaffinity refused", file=sys.stderr)
"""


def syscall_groups() -> dict[str, list[str]]:
    """systemd's syscall groups (`systemd-analyze syscall-filter`): @name -> members."""
    out = analyze("syscall-filter").stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def unit_syscall_allow_list(name: str) -> set[str]:
    """The system calls the unit's SystemCallFilter= lines allow, as systemd combines them."""
    groups = syscall_groups()
    allowed: set[str] = set()
    for line in (SYSTEMD / name).read_text().splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1].split()
            if value[0].startswith("~"):
                allowed -= expand([value[0][1:], *value[1:]], groups)
            else:
                allowed |= expand(value, groups)
    assert allowed, f"{name}: no SystemCallFilter= allow list"
    return allowed


def proc_mount_options(name: str) -> str:
    """The /proc the unit's ProtectProc= and ProcSubset= give the daemon, as mount options."""
    settings = dict(
        line.split("=", 1) for line in (SYSTEMD / name).read_text().splitlines() if line.startswith("Pro")
    )
    options = [f"hidepid={settings['ProtectProc']}"] if "ProtectProc" in settings else []
    if settings.get("ProcSubset") == "pid":
        options.append("subset=pid")
    return ",".join(options) or "defaults"


def test_daemon_serves_inside_the_units_syscall_filter_and_memory_rules(tmp_path: Path) -> None:
    """Also with /proc mounted as the unit has it (in a mount namespace of the test's own)."""
    allowed = unit_syscall_allow_list("milter.service")
    assert "sched_setaffinity" not in allowed and "mount" not in allowed  # the ~ line took effect
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    maildir = tmp_path / "Maildir"
    log = tmp_path / "milter.log"
    serve = (
        PROBE + "from milter.cli import main\n"
        f"sys.exit(main(['serve', '--listen', '127.0.0.1:{port}', '--next-hop', 'maildir:{maildir}']))\n"
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount -t proc -o {proc_mount_options("milter.service")} proc /proc && exec "$@"', "sh",
                sys.executable, "-c", SANDBOX, ",".join(sorted(allowed)), sys.executable, "-c", serve,
            ],
            stdout=out, stderr=out, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"milter exited {proc.returncode}:\n{log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"milter did not listen:\n{log.read_text()}"
                time.sleep(0.1)
        message = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: hardened\r\n\r\nHello.\r\n"
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("a@example.org", ["b@example.test"], message)
        [delivered] = list((maildir / "new").iterdir())
        assert b"X-Spam-Score: " in delivered.read_bytes()
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            if ":\t" in line
        )
        assert (status["NoNewPrivs"].strip(), status["Seccomp"].strip()) == ("1", "2")  # 2: filter mode
        text = log.read_text()
        assert "mdwe 1" in text and "sched_setaffinity refused" in text, text  # the sandbox was real
        assert "Traceback" not in text and "Operation not permitted" not in text, text
        assert "cpuinfo" not in text, text  # onnxruntime found its CPU features
    finally:
        proc.terminate()
        proc.wait(30)


# --- milter-retrain.service and its timer (docs/learning.md) ----------------------------------

RETRAIN_UNITS = ("milter-retrain.service", "milter-retrain.timer")


def test_retrain_service_and_timer_verify_with_no_warning(tmp_path: Path) -> None:
    service = unit_copy("milter-retrain.service", tmp_path)
    timer = tmp_path / "milter-retrain.timer"
    timer.write_text((SYSTEMD / "milter-retrain.timer").read_text())
    proc = analyze("verify", "--man=no", str(service), str(timer))
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", f"systemd-analyze verify:\n{output}"


def test_retrain_service_exposure_at_most_2() -> None:
    proc = analyze("security", "--offline=true", "--no-pager", str(SYSTEMD / "milter-retrain.service"))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert found and float(found.group(1)) <= MAX_EXPOSURE, proc.stdout + proc.stderr


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_retrain_units_run_retrain_to_shadow_daily() -> None:
    service, timer = (unit_settings(name) for name in RETRAIN_UNITS)
    assert service["Type"] == ["oneshot"] and service["User"] == ["milter"]
    assert service["SupplementaryGroups"] == ["milter-feedback"]  # the store's group
    assert service["ExecStart"] == [
        f"{INSTALLED_COMMAND} retrain --config /etc/milter/milter.yaml --to shadow"
    ]
    assert service["SuccessExitStatus"] == ["3"]  # not enough feedback yet is no failure
    assert "/var/lib/milter-feedback" in service["ReadWritePaths"][0]  # SQLite readers write -shm
    assert service["PrivateNetwork"] == ["yes"]
    assert timer["OnCalendar"] == ["daily"] and timer["Persistent"] == ["true"]
    assert timer["WantedBy"] == ["timers.target"]
