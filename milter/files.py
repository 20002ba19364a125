"""Files that readers (the daemon's reload watcher, the metrics) see whole or not at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, data: bytes, check: Callable[[str], None] | None = None) -> None:
    """Write `data` to `path` via a temporary file in the same directory (a dot name ending in
    .tmp, which the reload watcher ignores) and a rename; `check`, given the temporary file's
    path, may refuse it by raising, and then `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
