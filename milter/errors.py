"""The exceptions milter raises on purpose; each names what was wrong and what was expected."""

from __future__ import annotations

from pathlib import Path


class MilterError(Exception):
    """Base of every error milter raises deliberately."""


class ConfigError(MilterError):
    """The configuration (file or flags) is invalid."""


class FileError(MilterError):
    """An error located in a file: `path:line: message`, as compilers print them."""

    def __init__(self, path: Path | str | None, message: str, line: int | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.message = message
        where = str(self.path) if self.path is not None else "<input>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {message}")


class RulesError(FileError):
    """A rules file is invalid."""


class ModelError(FileError):
    """A model file cannot be loaded or does not fit this version of milter."""


class TextVersionError(ModelError):
    """A sound model file, written for another message->text version than this milter reads
    (a site model trained before an upgrade): retraining, or the shipped model, is the remedy."""


class RelayError(MilterError):
    """The next hop did not take the message."""
