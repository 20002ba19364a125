"""Logging: one line per message, readable by people and by journald, or JSON for machines.

Under systemd (JOURNAL_STREAM or INVOCATION_ID set) lines carry no timestamp (journald adds its
own) and start with a `<N>` syslog priority prefix, which journald turns into the entry's level.
`--log-format json` writes one JSON object per line, with the message fields as keys.

The per-message line is `log_message(fields)`: queue id / Message-ID, client, sender, number of
recipients, size, probability, rule, action, the reply given and the next hop's reply, and the
milliseconds the message took.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

MESSAGE_LOGGER = "milter.message"
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
# Field order in text lines: the ones an admin greps for first.
_ORDER = (
    "queue_id",
    "message_id",
    "client",
    "helo",
    "from",
    "rcpts",
    "size",
    "probability",
    "rule",
    "action",
    "reply",
    "next_hop",
    "ms",
    "error",
)


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, object] | None = getattr(record, "fields", None)
        text = record.getMessage()
        if fields:
            text = " ".join(f"{k}={_text_value(v)}" for k, v in _ordered(fields))
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if self.journald:
            prefix = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>"
            # Each line of a traceback is its own journal entry: keep the level on all of them.
            return "\n".join(prefix + line for line in text.split("\n"))
        stamp = self.formatTime(record, "%Y-%m-%d %H:%M:%S")
        return f"{stamp} {record.levelname.lower()} {record.name}: {text}"


class JsonFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {}
        if not self.journald:
            data["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z")
        data["level"] = record.levelname.lower()
        data["logger"] = record.name
        fields: Mapping[str, object] | None = getattr(record, "fields", None)
        if fields:
            data.update(_ordered(fields))
        else:
            data["msg"] = record.getMessage()
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def setup_logging(
    log_format: str = "text", level: int = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send milter's logs to `stream` (stderr) in `log_format`; returns the handler installed."""
    journald = under_systemd()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(journald) if log_format == "json" else TextFormatter(journald))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # No formatter here shows threads or processes: don't collect them for every record (the
    # logging HOWTO's "Optimization" section; one record is written per message).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # aiosmtpd logs every command at INFO: far too much for a mail log, and it costs time.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    return handler


def log_message(fields: Mapping[str, object], level: int = logging.INFO) -> None:
    """The one line for one message."""
    logger = logging.getLogger(MESSAGE_LOGGER)
    if logger.isEnabledFor(level):
        logger.log(level, "message", extra={"fields": fields})


def _ordered(fields: Mapping[str, object]) -> list[tuple[str, object]]:
    known = [(k, fields[k]) for k in _ORDER if k in fields and fields[k] is not None]
    rest = [(k, v) for k, v in fields.items() if k not in _ORDER and v is not None]
    return known + rest


def _text_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text
