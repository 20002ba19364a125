"""The console's password file: salted scrypt hashes (hashlib.scrypt), never a password.

One line per user, `NAME:scrypt$N$r$p$SALT$HASH` (salt and hash in unpadded base64), as
`milter console-password FILE` writes it; lines starting with `#` and blank lines are ignored.
scrypt's cost (N=2**15, r=8: about 32 MiB and a tenth of a second per try) is what makes a
stolen file slow to guess; the console rate-limits tries on top of it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from milter.errors import MilterError

SCHEME = "scrypt"
N, R, P = 2**15, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_MEMORY = 128 * 1024 * 1024  # scrypt needs 128 * N * r bytes; the default cap (32 MiB) is too low
USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
FORM = "NAME:scrypt$N$r$p$SALT$HASH (written by `milter console-password FILE`)"


class PasswordFileError(MilterError):
    """The password file cannot be read or a line is not in the expected form."""


@dataclass(frozen=True, slots=True)
class Hashed:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __str__(self) -> str:
        return f"{SCHEME}${self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.digest)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=MAX_MEMORY, dklen=HASH_BYTES
    )


def hash_password(password: str) -> Hashed:
    salt = secrets.token_bytes(SALT_BYTES)
    return Hashed(N, R, P, salt, _scrypt(password, salt, N, R, P))


def verify(password: str, hashed: Hashed) -> bool:
    """Whether `password` is the one `hashed` was made from (constant-time comparison)."""
    return hmac.compare_digest(_scrypt(password, hashed.salt, hashed.n, hashed.r, hashed.p), hashed.digest)


def parse_hash(text: str) -> Hashed:
    """`scrypt$N$r$p$SALT$HASH` -> Hashed; ValueError saying what is wrong."""
    parts = text.strip().split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError(f"expected {FORM}")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ValueError(f"unreadable numbers or base64; expected {FORM}") from None
    if n < 2**14 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or 128 * n * r > MAX_MEMORY:
        raise ValueError(f"scrypt parameters N={n} r={r} p={p} out of range; expected {FORM}")
    if len(salt) < 8 or len(digest) != HASH_BYTES:
        raise ValueError(f"salt or hash of the wrong length; expected {FORM}")
    return Hashed(n, r, p, salt, digest)


def read_password_file(path: Path) -> dict[str, Hashed]:
    """The users and their hashes in `path`; PasswordFileError naming the file and line."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PasswordFileError(f"{path}: cannot read: {reason}; expected {FORM}") from None
    users: dict[str, Hashed] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, rest = line.partition(":")
        if not sep or not USER.fullmatch(name):
            raise PasswordFileError(f"{path}:{number}: expected {FORM}")
        try:
            users[name] = parse_hash(rest)
        except ValueError as e:
            raise PasswordFileError(f"{path}:{number}: {e}") from None
    if not users:
        raise PasswordFileError(f"{path}: no user in it; expected at least one line {FORM}")
    return users


def write_password_file(path: Path, user: str, password: str) -> None:
    """Set `user`'s password in `path` (other users' lines kept), written whole, mode 0600."""
    if not USER.fullmatch(user):
        raise ValueError(f"user name {user!r}: expected letters, digits and ._@+- (at most 64)")
    kept: list[str] = []
    if path.exists():
        read_password_file(path)  # never rewrite a file that is not a password file
        for line in path.read_text("utf-8").splitlines():
            if line.strip().partition(":")[0] != user:
                kept.append(line)
    kept.append(f"{user}:{hash_password(password)}")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("\n".join(kept) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
