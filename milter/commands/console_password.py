"""`milter console-password FILE`: make or update the console's password file."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Set a user's password for the operator console (milter serve --console) in FILE, the file that
the config key console_password_file names. FILE keeps one line per user with a salted scrypt
hash of the password (never the password itself); other users' lines are kept. FILE is written
whole and with mode 0600: make it readable by the milter user alone (chown milter FILE).

The password is read from the terminal (asked twice), or, when standard input is not a
terminal, as the first line of standard input (for scripts: printf '%s\\n' "$pw" | ...).
A console on an address other than loopback refuses to start without this file.
"""

EPILOG = """\
exit status:
  0  the password was set
  2  usage error: empty or mismatched password, bad user name, FILE not a password file

examples:
  milter console-password /etc/milter/console.passwd
  milter console-password --user alice /etc/milter/console.passwd
  printf '%s\\n' "$PASSWORD" | milter console-password /etc/milter/console.passwd
"""

MIN_LENGTH = 8


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "console-password",
        help="set a password for the operator console (a salted scrypt hash in FILE)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="the password file (created if absent)")
    parser.add_argument("--user", default="admin", help="the user whose password is set (default admin)")
    parser.set_defaults(func=run)


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("New console password: ")
        if getpass.getpass("Again: ") != first:
            print("milter console-password: the two passwords differ; nothing written", file=sys.stderr)
            return None
        return first
    return sys.stdin.readline().rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    from milter.password import PasswordFileError, write_password_file

    password = _read_password()
    if password is None:
        return 2
    if len(password) < MIN_LENGTH:
        print(
            f"milter console-password: the password has {len(password)} characters; expected at "
            f"least {MIN_LENGTH}; nothing written",
            file=sys.stderr,
        )
        return 2
    try:
        write_password_file(args.file, args.user, password)
    except (PasswordFileError, ValueError) as e:
        print(f"milter console-password: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"milter console-password: {args.file}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"milter console-password: password of {args.user} set in {args.file}")
    return 0
